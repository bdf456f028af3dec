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
use crate::store::{HistoryQuery, NetworkId};

use super::super::change::{self, GapMarker, StateChange};
use super::super::Outbound;
use super::fill::{FillLine, Known};
use super::record::{line_time, Stored};
use super::Actor;

/// The most lines one gap fill asks for; a full answer may be truncated, so it also
/// gets a gap marker.
const FILL_LIMIT: usize = 1000;
/// How long the server may take to answer a gap fill before a marker is written.
const FILL_WAIT: Duration = Duration::from_secs(10);
/// How long a fill waits for the backlog writer to commit before it checks what is
/// stored; past it, a marker instead of the fill (the store is in trouble).
const KNOWN_WAIT: Duration = Duration::from_secs(5);
/// Stored lines read per query when checking a fill against the backlog.
const KNOWN_PAGE: i64 = 1000;
/// Added to each end of a disconnect window (from the last line read, to the
/// channel's rejoin): the server's clock and ours may differ a little, and a fill
/// skips what is already stored.
pub(super) const READ_MARGIN: chrono::Duration = chrono::Duration::seconds(2);

/// How long after registration a wanted channel may take to be rejoined before its
/// window gets a marker (a refused JOIN, a slow server).
const REJOIN_WAIT: Duration = Duration::from_secs(60);

/// A channel whose disconnect window is covered once we are back in it: lines said
/// between registration and the JOIN are in no live stream, and a server serves a
/// channel's history only to its members.
pub(super) struct Rejoin {
    chan: Vec<u8>,
    key: Vec<u8>,
    /// The window's start (`Net::down_since`).
    pub(super) from: DateTime<Utc>,
    deadline: tokio::time::Instant,
}

impl Rejoin {
    /// When the window gets a marker unless the channel is rejoined first.
    pub(super) fn due(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// As a park carries it (see `park`): the window and the time left.
    pub(super) fn park(&self) -> RejoinPark {
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        RejoinPark {
            chan: self.chan.clone(),
            from_ms: self.from.timestamp_millis(),
            left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Back from a park; `key` is the channel folded by the network's casemapping.
    pub(super) fn resume(p: RejoinPark, key: Vec<u8>) -> Rejoin {
        Rejoin {
            chan: p.chan,
            key,
            from: DateTime::from_timestamp_millis(p.from_ms).unwrap_or_else(Utc::now),
            deadline: tokio::time::Instant::now() + Duration::from_millis(p.left_ms),
        }
    }
}

/// A channel's disconnect window still waiting for the channel's rejoin, carried
/// across a park (`NetPark::rejoins`): the resumed actor covers it at the JOIN, or
/// marks it when the time left runs out, as this one would have.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejoinPark {
    pub chan: Vec<u8>,
    /// The window's start, milliseconds since the epoch.
    pub from_ms: i64,
    /// How long the channel may still take to be rejoined.
    pub left_ms: u64,
}

/// The marker text of a disconnect window.
fn window_text(network: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!(
        "[gap] Ferry was not connected to {network} (a disconnect, restart or failover): messages from {} to {} may be missing",
        from.format("%Y-%m-%d %H:%M:%S%.3f"),
        to.format("%H:%M:%S%.3f UTC"),
    )
}

/// A disconnect window to cover: the marker's text, and the window.
#[derive(Clone)]
pub(super) struct Window {
    text: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl Window {
    fn new(text: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Window {
        Window {
            text: text.to_owned(),
            from,
            to,
        }
    }
}

/// One channel's gap fill in flight.
pub(super) struct Fill {
    chan: Vec<u8>,
    key: Vec<u8>,
    /// The window, whose marker is written if the server cannot fill; `None` for a
    /// `chathistory` batch the server sent unasked (see [`Actor::fill_line`]): no
    /// window, so never a marker.
    window: Option<Window>,
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

/// The server serves `CHATHISTORY` to us, in batches: without `batch` the answer
/// would be indistinguishable from live lines (and, with `draft/event-playback`,
/// replayed QUITs and NICKs would change the live state).
fn has_history(net: &super::net::Net) -> bool {
    let caps = &net.state.caps;
    (caps.contains("draft/chathistory") || caps.contains("chathistory")) && caps.contains("batch")
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
            let net = &self.nets[&id];
            // This actor already covered a window that holds this one when the
            // network registered (see `Net::down_since`): one marker, not two.
            if net.covered_from.is_some_and(|c| c <= from) && !net.wanted.is_empty() {
                marked.push(if has_history(net) {
                    format!("{}:chathistory", net.config.name)
                } else {
                    net.config.name.clone()
                });
                continue;
            }
            if let Some(name) = self.cover_gap(id, text, from, to).await {
                marked.push(name);
            }
        }
        marked
    }

    /// A network registered after a disconnect window that started at `from`: each
    /// wanted channel's window ends, and is covered, when the channel is rejoined
    /// (`rejoined`), or gets a marker after `REJOIN_WAIT`.
    pub(super) fn await_rejoins(&mut self, id: NetworkId, from: DateTime<Utc>) {
        let Some(net) = self.nets.get_mut(&id) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + REJOIN_WAIT;
        net.rejoins = net
            .wanted
            .iter()
            .map(|(key, (chan, _))| Rejoin {
                chan: chan.clone(),
                key: key.clone(),
                from,
                deadline,
            })
            .collect();
    }

    /// We are back in `chan` (our JOIN's echo, server time `at`): its window ends
    /// here (plus `READ_MARGIN`; the fill skips what arrived live) and is covered.
    pub(super) async fn rejoined(&mut self, id: NetworkId, chan: &[u8], at: DateTime<Utc>) {
        let Some(net) = self.nets.get_mut(&id) else {
            return;
        };
        let key = net.state.fold(chan);
        let Some(i) = net.rejoins.iter().position(|r| r.key == key) else {
            return;
        };
        let r = net.rejoins.swap_remove(i);
        let text = window_text(&net.config.name, r.from, at);
        self.cover_channel(id, r.chan, &text, r.from, at + READ_MARGIN)
            .await;
    }

    /// Covers one network's disconnect window: a fill where the server offers
    /// history, else a marker in every wanted channel. Returns the network as
    /// `name` (marked) or `name:chathistory` (asked), or `None` when it has no
    /// channels.
    pub(super) async fn cover_gap(
        &mut self,
        id: NetworkId,
        text: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<String> {
        let net = self.nets.get_mut(&id)?;
        let chans: Vec<Vec<u8>> = net.wanted.values().map(|(n, _)| n.clone()).collect();
        if chans.is_empty() {
            return None;
        }
        let name = if has_history(net) {
            format!("{}:chathistory", net.config.name)
        } else {
            net.config.name.clone()
        };
        for chan in chans {
            self.cover_channel(id, chan, text, from, to).await;
        }
        Some(name)
    }

    /// Covers one channel's window: a fill where the server offers history, else
    /// a marker.
    async fn cover_channel(
        &mut self,
        id: NetworkId,
        chan: Vec<u8>,
        text: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) {
        let Some(net) = self.nets.get_mut(&id) else {
            return;
        };
        if !has_history(net) {
            self.write_gap(id, chan, &Window::new(text, from, to)).await;
            return;
        }
        let stamp = |t: DateTime<Utc>| {
            Bytes::from(format!("timestamp={}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")))
        };
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
            window: Some(Window::new(text, from, to)),
            batch: None,
            lines: Vec::new(),
            deadline: tokio::time::Instant::now() + FILL_WAIT,
        });
    }

    /// Stores one gap marker in `chan` (kind `GAP`: a NOTICE from `*ferry*`, see
    /// `change::gap_line`) and sends it to the clients as a typed
    /// [`StateChange::Gap`].
    async fn write_gap(&mut self, network: NetworkId, chan: Vec<u8>, window: &Window) {
        let now = Utc::now();
        let Some(net) = self.nets.get_mut(&network) else {
            return;
        };
        let text = &window.text;
        let marker = Stored {
            kind: "GAP",
            time: now,
            sender: change::GAP_SENDER.to_owned(),
            raw: change::gap_line(&chan, text),
            text: text.clone(),
            msgid: None,
        };
        let buffers = [chan];
        let records = self.recorder.records(network, &net.state, marker, &buffers);
        let (seq, time) = (records[0].seq, records[0].time);
        if self.writer.write_all(records).await.is_err() {
            warn!(user = %self.name, "backlog writer is gone; gap marker not stored");
        }
        let [buffer] = buffers;
        let gap = GapMarker {
            buffer,
            seq,
            time,
            text: text.clone(),
            from: window.from,
            to: window.to,
        };
        net.relay(
            &Outbound::State(Arc::new(StateChange::Gap(gap))),
            &self.config.counters,
        );
    }

    /// Takes a line that belongs to a gap fill: the `chathistory` batch's start, its
    /// lines, its end, or the server's `FAIL CHATHISTORY`. Returns whether it did.
    ///
    /// Every `chathistory` batch is history, asked for or not: one the server sends
    /// on its own (Ergo's autoreplay on JOIN) is kept as a fill is (what the backlog
    /// lacks is stored, new conversation relayed, events only stored), never applied
    /// to live state. That holds for a nested or labeled one too: clients' own
    /// `CHATHISTORY` is answered from the store, never sent upstream.
    pub(super) async fn fill_line(&mut self, network: NetworkId, msg: &Message) -> bool {
        let Some(net) = self.nets.get_mut(&network) else {
            return false;
        };
        let p = |i: usize| msg.params.get(i).map(|b| &b[..]).unwrap_or_default();
        if msg.command == Command::Batch {
            let r = p(0);
            if let Some(r) = r.strip_prefix(b"+") {
                if p(1) != b"chathistory" {
                    return false;
                }
                let r = String::from_utf8_lossy(r).into_owned();
                let key = net.state.fold(p(2));
                if let Some(f) = net
                    .fills
                    .iter_mut()
                    .find(|f| f.batch.is_none() && f.window.is_some() && f.key == key)
                {
                    f.batch = Some(r);
                    return true;
                }
                // Not asked for (Ergo's autoreplay on JOIN, say): history all the
                // same. Its lines must not reach the live path, where a replayed
                // JOIN, QUIT or NICK would change member lists and our nick and be
                // relayed as if it happened now.
                info!(user = %self.name, chan = %irc::decode(p(2)), "chathistory batch not asked for: taken as history");
                net.fills.push(Fill {
                    chan: p(2).to_vec(),
                    key,
                    window: None,
                    batch: Some(r),
                    lines: Vec::new(),
                    deadline: tokio::time::Instant::now(),
                });
                return true;
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
                if let Some(window) = &f.window {
                    Box::pin(self.write_gap(network, f.chan, window)).await;
                }
                return true;
            }
        }
        false
    }

    /// Stores a gap fill's lines the backlog does not have yet (see `fill`):
    /// conversation is stored and relayed, replayed events (`draft/event-playback`)
    /// only stored, a history service's stand-ins dropped. A possibly truncated
    /// answer also gets a marker, and so does an answer that cannot be checked
    /// against the backlog (the store does not answer): better a marker than lines
    /// stored twice. A batch the server sent unasked is kept the same way, but never
    /// gets a marker (it covers no window of ours).
    async fn finish_fill(&mut self, network: NetworkId, f: Fill) {
        let Some(mut known) = self.known(network, &f).await else {
            if let Some(window) = &f.window {
                self.write_gap(network, f.chan, window).await;
            }
            return;
        };
        let buffers = [f.chan];
        let max = self.config.membership_events_max_members;
        let (mut stored, mut dropped) = (0usize, 0usize);
        for msg in &f.lines {
            let (kind, relay) = match FillLine::of(msg) {
                FillLine::Conversation(kind) => (kind, true),
                FillLine::Event(kind) => (kind, false),
                FillLine::HistoryService => {
                    dropped += 1;
                    continue;
                }
                FillLine::Skip => continue,
            };
            let time = line_time(msg);
            if known.take(msg, time) {
                continue;
            }
            let Some(net) = self.nets.get_mut(&network) else {
                return;
            };
            // The batch was ours; clients never saw it open.
            let mut msg = msg.clone();
            msg.remove_tag("batch");
            // As live: no joins, parts, quits and nick changes in a crowded channel.
            if matches!(kind, "JOIN" | "PART" | "QUIT" | "NICK")
                && net.state.member_count(&buffers[0]) > max
            {
                continue;
            }
            let records = self.recorder.records(
                network,
                &net.state,
                Stored::line(&msg, kind, time),
                &buffers,
            );
            let seq = records[0].seq;
            if self.writer.write_all(records).await.is_err() {
                warn!(user = %self.name, "backlog writer is gone; gap fill not stored");
                break;
            }
            stored += 1;
            if relay {
                net.relay(
                    &Outbound::Relay {
                        msg: Arc::new(msg),
                        seq: Some(seq),
                        time,
                        echo_of: None,
                        buffers: buffers.to_vec().into(),
                    },
                    &self.config.counters,
                );
            }
        }
        let [chan] = buffers;
        info!(user = %self.name, chan = %irc::decode(&chan), asked = f.window.is_some(), got = f.lines.len(), stored, history_service = dropped, "gap filled from CHATHISTORY");
        if let Some(window) = f.window.filter(|_| f.lines.len() >= FILL_LIMIT) {
            self.write_gap(network, chan, &window).await;
        }
    }

    /// What the backlog holds of the fill's buffer over the answer's time span, once
    /// every line this actor queued is committed (a line of the window's edge that
    /// also arrived live may still be in the writer's queue, and so may an earlier
    /// fill of an overlapping window). `None` when the store does not answer in time.
    async fn known(&self, network: NetworkId, f: &Fill) -> Option<Known> {
        let times = f.lines.iter().map(line_time);
        let (Some(from), Some(to)) = (times.clone().min(), times.max()) else {
            return Some(Known::default());
        };
        let fail = |why: &dyn std::fmt::Display| {
            warn!(user = %self.name, chan = %irc::decode(&f.chan), error = %why, "cannot check a gap fill against the backlog; gap marker instead");
        };
        if self.owner.lease.riding_out() {
            // The store is away: its answer would come only after the outage, and
            // waiting for it would stall this actor's relay.
            fail(&"the store is unreachable");
            return None;
        }
        match tokio::time::timeout(KNOWN_WAIT, self.writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                fail(&e);
                return None;
            }
            Err(_) => {
                fail(&"the backlog writer did not commit in time");
                return None;
            }
        }
        let mut query = HistoryQuery {
            user: self.id,
            network: Some(network),
            buffer_key: Some(f.key.clone()),
            // Stored times are whole milliseconds.
            from: Some(from - chrono::Duration::milliseconds(1)),
            to: Some(to + chrono::Duration::milliseconds(1)),
            limit: KNOWN_PAGE,
            ..HistoryQuery::default()
        };
        let mut stored = Vec::new();
        loop {
            let page = match self.store.history(&query).await {
                Ok(page) => page,
                Err(e) => {
                    fail(&e);
                    return None;
                }
            };
            let full = page.len() as i64 >= KNOWN_PAGE;
            query.after = page.last().map(|m| m.seq);
            stored.extend(page);
            if !full {
                break;
            }
        }
        Some(Known::new(&stored))
    }

    /// Fills the server did not answer in time get a marker, and so do windows of
    /// channels not rejoined in time.
    pub(super) async fn expire_fills(&mut self) {
        let now = tokio::time::Instant::now();
        let mut late = Vec::new();
        let mut unjoined = Vec::new();
        for (id, net) in &mut self.nets {
            let (old, keep): (Vec<Rejoin>, Vec<Rejoin>) =
                net.rejoins.drain(..).partition(|r| r.deadline <= now);
            net.rejoins = keep;
            for r in old {
                warn!(user = %self.name, chan = %irc::decode(&r.chan), "channel not rejoined in time: gap marker");
                let to = Utc::now();
                let text = window_text(&net.config.name, r.from, to);
                unjoined.push((*id, r.chan, Window::new(&text, r.from, to)));
            }
            let (old, keep): (Vec<Fill>, Vec<Fill>) = net
                .fills
                .drain(..)
                .partition(|f| f.deadline <= now && f.batch.is_none());
            net.fills = keep;
            late.extend(old.into_iter().map(|f| (*id, f)));
        }
        for (id, f) in late {
            if let Some(window) = &f.window {
                Box::pin(self.write_gap(id, f.chan, window)).await;
            }
        }
        for (id, chan, window) in unjoined {
            Box::pin(self.write_gap(id, chan, &window)).await;
        }
    }
}
