//! Covering a disconnect window (see `user::Gap`): where the server offers
//! `chathistory`, ask it for each joined channel (`CHATHISTORY BETWEEN`) and store
//! what it returns that the backlog lacks; elsewhere, or when the server refuses
//! or stays silent, write a gap marker.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::irc::{self, Command, Message};
use crate::store::NetworkId;

use super::super::Outbound;
use super::record::{line_time, stored_kind, Stored};
use super::Actor;

/// The most lines one gap fill asks for; a full answer may be truncated, so it also
/// gets a gap marker.
const FILL_LIMIT: usize = 1000;
/// How long the server may take to answer a gap fill before a marker is written.
const FILL_WAIT: Duration = Duration::from_secs(10);

/// One channel's gap fill in flight.
pub(super) struct Fill {
    chan: Vec<u8>,
    key: Vec<u8>,
    /// The gap marker's text, written if the server cannot fill.
    text: String,
    /// The server's batch reference, once it opened the `chathistory` batch.
    batch: Option<String>,
    lines: Vec<Message>,
    deadline: tokio::time::Instant,
}

impl Fill {
    /// When a marker is due unless the server answers first.
    pub(super) fn due(&self) -> Option<tokio::time::Instant> {
        self.batch.is_none().then_some(self.deadline)
    }
}

impl Actor {
    /// Asks for history or writes gap markers in every wanted channel; returns the
    /// networks as `name` (marked) or `name:chathistory` (asked).
    pub(super) async fn gap_marker(
        &mut self,
        text: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<String> {
        if !self.may_act() {
            return Vec::new();
        }
        let mut marked = Vec::new();
        let ids: Vec<NetworkId> = self.nets.keys().copied().collect();
        for id in ids {
            let net = self.nets.get_mut(&id).expect("listed");
            let chans: Vec<Vec<u8>> = net.wanted.values().map(|(n, _)| n.clone()).collect();
            if chans.is_empty() {
                continue;
            }
            let history = net.state.caps.contains("draft/chathistory")
                || net.state.caps.contains("chathistory");
            if history {
                let stamp = |t: DateTime<Utc>| {
                    Bytes::from(format!("timestamp={}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")))
                };
                for chan in chans {
                    net.send_upstream(Message::new(
                        Command::Chathistory,
                        [
                            Bytes::from_static(b"BETWEEN"),
                            Bytes::from(chan.clone()),
                            stamp(from),
                            stamp(to),
                            Bytes::from(FILL_LIMIT.to_string()),
                        ],
                    ));
                    net.fills.push(Fill {
                        key: net.state.fold(&chan),
                        chan,
                        text: text.to_owned(),
                        batch: None,
                        lines: Vec::new(),
                        deadline: tokio::time::Instant::now() + FILL_WAIT,
                    });
                }
                marked.push(format!("{}:chathistory", net.config.name));
            } else {
                for chan in chans {
                    self.write_gap(id, chan, text).await;
                }
                marked.push(self.nets[&id].config.name.clone());
            }
        }
        marked
    }

    /// Stores and relays one gap marker in `chan`: a NOTICE from `*ferry*`, kind `GAP`.
    async fn write_gap(&mut self, network: NetworkId, chan: Vec<u8>, text: &str) {
        let now = Utc::now();
        let Some(net) = self.nets.get_mut(&network) else {
            return;
        };
        let mut raw = b":*ferry*!ferry@ferry NOTICE ".to_vec();
        raw.extend_from_slice(&chan);
        raw.extend_from_slice(b" :");
        raw.extend_from_slice(text.as_bytes());
        let raw = Bytes::from(raw);
        let Ok(msg) = Message::parse(raw.clone()) else {
            return;
        };
        let marker = Stored {
            kind: "GAP",
            time: now,
            sender: "*ferry*".to_owned(),
            raw,
            text: text.to_owned(),
            msgid: None,
        };
        let buffers = [chan];
        let records = self.recorder.records(network, &net.state, marker, &buffers);
        let seq = records[0].seq;
        if self.writer.write_all(records).await.is_err() {
            warn!(user = %self.name, "backlog writer is gone; gap marker not stored");
        }
        let [chan] = buffers;
        net.relay(
            &Outbound::Relay {
                msg: Arc::new(msg),
                seq: Some(seq),
                time: now,
                echo_of: None,
                buffers: vec![chan].into(),
            },
            &self.config.counters,
        );
    }

    /// Takes a line that belongs to a gap fill: the `chathistory` batch's start, its
    /// lines, its end, or the server's `FAIL CHATHISTORY`. Returns whether it did.
    pub(super) async fn fill_line(&mut self, network: NetworkId, msg: &Message) -> bool {
        let Some(net) = self.nets.get_mut(&network) else {
            return false;
        };
        if net.fills.is_empty() {
            return false;
        }
        let p = |i: usize| msg.params.get(i).map(|b| &b[..]).unwrap_or_default();
        if msg.command == Command::Batch {
            let r = p(0);
            if let Some(r) = r.strip_prefix(b"+") {
                if p(1) == b"chathistory" {
                    let key = net.state.fold(p(2));
                    if let Some(f) = net
                        .fills
                        .iter_mut()
                        .find(|f| f.batch.is_none() && f.key == key)
                    {
                        f.batch = Some(String::from_utf8_lossy(r).into_owned());
                        return true;
                    }
                }
                return false;
            }
            if let Some(r) = r.strip_prefix(b"-") {
                let r = String::from_utf8_lossy(r);
                if let Some(i) = net
                    .fills
                    .iter()
                    .position(|f| f.batch.as_deref() == Some(&*r))
                {
                    let f = net.fills.remove(i);
                    Box::pin(self.finish_fill(network, f)).await;
                    return true;
                }
            }
            return false;
        }
        if let Some(b) = msg.tag("batch") {
            if let Some(f) = net.fills.iter_mut().find(|f| f.batch.as_deref() == Some(b)) {
                f.lines.push(msg.clone());
                return true;
            }
            return false;
        }
        if msg.command == Command::Fail && p(0).eq_ignore_ascii_case(b"CHATHISTORY") {
            let keys: Vec<Vec<u8>> = msg.params.iter().map(|x| net.state.fold(x)).collect();
            let i = net
                .fills
                .iter()
                .position(|f| f.batch.is_none() && keys.contains(&f.key))
                .or_else(|| net.fills.iter().position(|f| f.batch.is_none()));
            if let Some(i) = i {
                let f = net.fills.remove(i);
                let why =
                    String::from_utf8_lossy(msg.params.last().map(|b| &b[..]).unwrap_or_default())
                        .into_owned();
                warn!(user = %self.name, chan = %irc::decode(&f.chan), %why, "gap fill refused");
                Box::pin(self.write_gap(network, f.chan, &f.text)).await;
                return true;
            }
        }
        false
    }

    /// Stores a gap fill's messages the backlog does not have yet (by msgid); a
    /// possibly truncated answer also gets a marker.
    async fn finish_fill(&mut self, network: NetworkId, f: Fill) {
        let ids: Vec<String> = f
            .lines
            .iter()
            .filter_map(|m| m.tag("msgid").map(str::to_owned))
            .collect();
        let known = self
            .store
            .msgids_known(self.id, network, &ids)
            .await
            .unwrap_or_default();
        let buffers = [f.chan];
        let mut stored = 0usize;
        for msg in &f.lines {
            if msg
                .tag("msgid")
                .is_some_and(|id| known.iter().any(|k| k == id))
            {
                continue;
            }
            // Conversation only (no CTCP but ACTION); joins and parts are not filled in.
            if !matches!(msg.command, Command::Privmsg | Command::Notice) {
                continue;
            }
            let Some(kind) = stored_kind(msg) else {
                continue;
            };
            let time = line_time(msg);
            let Some(net) = self.nets.get_mut(&network) else {
                return;
            };
            let records =
                self.recorder
                    .records(network, &net.state, Stored::line(msg, kind, time), &buffers);
            let seq = records[0].seq;
            if self.writer.write_all(records).await.is_err() {
                warn!(user = %self.name, "backlog writer is gone; gap fill not stored");
                break;
            }
            stored += 1;
            net.relay(
                &Outbound::Relay {
                    msg: Arc::new(msg.clone()),
                    seq: Some(seq),
                    time,
                    echo_of: None,
                    buffers: buffers.to_vec().into(),
                },
                &self.config.counters,
            );
        }
        let [chan] = buffers;
        info!(user = %self.name, chan = %irc::decode(&chan), got = f.lines.len(), stored, "gap filled from CHATHISTORY");
        if f.lines.len() >= FILL_LIMIT {
            self.write_gap(network, chan, &f.text).await;
        }
    }

    /// Fills the server did not answer in time get a marker.
    pub(super) async fn expire_fills(&mut self) {
        let now = tokio::time::Instant::now();
        let mut late = Vec::new();
        for (id, net) in &mut self.nets {
            let (old, keep): (Vec<Fill>, Vec<Fill>) = net
                .fills
                .drain(..)
                .partition(|f| f.deadline <= now && f.batch.is_none());
            net.fills = keep;
            late.extend(old.into_iter().map(|f| (*id, f)));
        }
        for (id, f) in late {
            Box::pin(self.write_gap(id, f.chan, &f.text)).await;
        }
    }
}
