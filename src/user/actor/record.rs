//! Lines from the server: replies to one client's query go to that client; every
//! other line updates the live state, is stored in the buffers it belongs to, and
//! is relayed to the network's clients. [`Recorder::records`] is the one place a
//! stored record is made (for live lines, gap markers and gap fills alike). Live
//! chat lines are offered to Web Push (`push::PushHub::offer`) as they are stored.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tracing::warn;

use crate::irc::{self, ctcp, Command, Message};
use crate::push;
use crate::store::{NetworkId, NewMessage, Seq, StreamKey, UserId};

use super::super::clock::SeqClock;
use super::super::routing::Route;
use super::super::state::{Effect, NetState};
use super::super::{DownstreamId, Outbound};
use super::{client, detach, regain, share, Actor};

/// What one line stores, the same in every buffer it is stored in.
pub(super) struct Stored {
    /// `PRIVMSG`, `ACTION`, `JOIN`, … (see [`stored_kind`]), or `GAP` for a marker.
    pub(super) kind: &'static str,
    /// Server time, else when it arrived.
    pub(super) time: DateTime<Utc>,
    pub(super) sender: String,
    pub(super) raw: Bytes,
    /// For display and search.
    pub(super) text: String,
    pub(super) msgid: Option<String>,
}

impl Stored {
    /// A line as the server sent it (or as it would echo our own).
    pub(super) fn line(msg: &Message, kind: &'static str, time: DateTime<Utc>) -> Stored {
        Stored {
            kind,
            time,
            sender: irc::decode(msg.source_nick().unwrap_or_default()).into_owned(),
            raw: msg.to_bytes(),
            text: display_text(msg, kind),
            msgid: msg.tag("msgid").map(str::to_owned),
        }
    }
}

/// Assigns message ids and builds the records that carry them.
pub(super) struct Recorder {
    user_id: UserId,
    /// The owner's epoch, which every record carries (see `cluster`).
    epoch: i64,
    /// The newest message id assigned.
    pub(super) last_seq: Seq,
    /// The node's id clock (`user::clock`); `None` when the node does not share
    /// channel lines (`[store] share_channel_lines = false`): ids are then dense per
    /// user, as before.
    clock: Option<Arc<SeqClock>>,
}

impl Recorder {
    pub(super) fn new(user_id: UserId, epoch: i64, clock: Option<Arc<SeqClock>>) -> Recorder {
        Recorder {
            user_id,
            epoch,
            last_seq: 0,
            clock,
        }
    }

    /// Sets the user's newest stored id (at start, adopt or resume); the node's clock
    /// is raised to it, so later ids are above it.
    pub(super) fn observe(&mut self, seq: Seq) {
        self.last_seq = self.last_seq.max(seq);
        if let Some(clock) = &self.clock {
            clock.observe(self.last_seq);
        }
    }

    /// Takes `n` consecutive new ids; returns the first.
    fn take_ids(&mut self, n: usize) -> Seq {
        let first = match &self.clock {
            Some(clock) => clock.reserve(self.last_seq, n),
            None => self.last_seq + 1,
        };
        self.last_seq = first + n.max(1) as Seq - 1;
        first
    }

    /// The record of a shareable line (see `streams`) stored in `buffer` with the id
    /// `seq` its stream gave it (above [`Recorder::last_seq`]).
    pub(super) fn shared_record(
        &mut self,
        network: NetworkId,
        state: &NetState,
        line: Stored,
        buffer: &[u8],
        seq: Seq,
        stream: Arc<StreamKey>,
    ) -> NewMessage {
        debug_assert!(
            seq > self.last_seq,
            "a stream's id is above the user's newest"
        );
        self.last_seq = self.last_seq.max(seq);
        NewMessage {
            user_id: self.user_id,
            seq,
            network_id: network,
            buffer_key: state.fold(buffer),
            buffer: buffer.to_vec(),
            time: truncate_ms(line.time),
            sender: line.sender,
            command: line.kind.to_owned(),
            raw: line.raw,
            text: line.text,
            msgid: line.msgid,
            epoch: self.epoch,
            stream: Some(stream),
        }
    }

    /// The records of one line stored in `buffers`: one per buffer, the `i`-th with
    /// id `first + i` where `first` is the next id.
    pub(super) fn records(
        &mut self,
        network: NetworkId,
        state: &NetState,
        line: Stored,
        buffers: &[Vec<u8>],
    ) -> Vec<NewMessage> {
        let Stored {
            kind,
            time,
            mut sender,
            raw,
            mut text,
            mut msgid,
        } = line;
        let time = truncate_ms(time);
        let n = buffers.len();
        let mut records = Vec::with_capacity(n);
        if n == 0 {
            return records;
        }
        let first = self.take_ids(n);
        for (i, buffer) in buffers.iter().enumerate() {
            // The last copy takes the strings, the others clone them.
            let last = i + 1 == n;
            let take = |s: &mut String| if last { std::mem::take(s) } else { s.clone() };
            records.push(NewMessage {
                user_id: self.user_id,
                seq: first + i as Seq,
                network_id: network,
                buffer_key: state.fold(buffer),
                buffer: buffer.clone(),
                time,
                sender: take(&mut sender),
                command: kind.to_owned(),
                raw: raw.clone(),
                text: take(&mut text),
                msgid: if last { msgid.take() } else { msgid.clone() },
                epoch: self.epoch,
                stream: None,
            });
        }
        records
    }
}

impl Actor {
    /// A line from the server, after the link answered what was its own (PING).
    pub(super) async fn upstream_message(
        &mut self,
        network: NetworkId,
        msg: Message,
        read_at: Instant,
    ) {
        if self.fill_line(network, &msg).await {
            return;
        }
        let net = self.nets.get_mut(&network).expect("caller checked");
        if regain::is_own_refusal(net, &msg) {
            return;
        }
        // Replies to one client's query go to that client only.
        let mut msg = msg;
        match net.router.route(&mut msg) {
            Route::Client(client) => {
                net.state.apply(&msg);
                net.reply(client, Outbound::Reply(msg));
                return;
            }
            Route::Drop => return,
            Route::Everyone => {}
        }
        if Actor::own_away_reply(net, &msg) {
            net.state.apply(&msg);
            return;
        }
        let echo_of = client::take_echo(net, &msg);
        self.record_and_relay(network, msg, echo_of, Some(read_at))
            .await;
    }

    /// Applies a line to the live state, stores it in the buffers it
    /// concerns, and relays it to the network's clients. `read_at`: when the upstream
    /// task read it (a line from the server), for the relay latency.
    pub(super) async fn record_and_relay(
        &mut self,
        network: NetworkId,
        msg: Message,
        echo_of: Option<DownstreamId>,
        read_at: Option<Instant>,
    ) {
        if !self.may_act() {
            return;
        }
        let net = self.nets.get_mut(&network).expect("caller checked");
        let effect = net.state.apply(&msg);
        if effect.stray {
            // Our PART or KICK from a channel we are not in (one refused by a bound):
            // nothing to store or show.
            return;
        }
        if let Some((chan, true)) = &effect.own_membership {
            if !self.keep_joined_channel(network, chan) {
                // Left again at once: no client hears of it.
                let net = self.nets.get_mut(&network).expect("caller checked");
                net.state.drop_changes();
                return;
            }
        }
        if (effect.own_membership.is_some() || effect.own_nick.is_some())
            && !self.own_changes(network, &effect).await
        {
            return;
        }
        let net = self.nets.get_mut(&network).expect("caller checked");
        regain::on_nick_freed(net, &msg);
        let time = line_time(&msg);
        let rejoined = match &effect.own_membership {
            Some((chan, true)) if !net.rejoins.is_empty() => Some(chan.clone()),
            _ => None,
        };
        let left = match &effect.own_membership {
            Some((chan, false)) => Some(net.state.fold(chan)),
            _ => None,
        };
        if let Some(streams) = &self.config.streams {
            // Our own join starts our cursor in the channel's stream at its end; our
            // part or kick ends it.
            match &effect.own_membership {
                Some((chan, true)) => net.streams.enter(streams, net.state.fold(chan)),
                Some((chan, false)) => net.streams.leave(&net.state.fold(chan)),
                None => {}
            }
        }
        let origin = share::Origin {
            from_server: read_at.is_some() && echo_of.is_none(),
            own_change: effect.own_membership.is_some() || effect.own_nick.is_some(),
        };
        let max = self.config.membership_events_max_members;
        let stored = stored_in(&net.state, &msg, effect, max)
            .map(|(kind, buffers)| (kind, self.admit_buffers(network, buffers)))
            .filter(|(_, buffers)| !buffers.is_empty());
        let net = self.nets.get_mut(&network).expect("caller checked");
        // The shared line's confirmation, released once its row is queued.
        let mut handing = None;
        let (seq, records, buffers) = match stored {
            Some((kind, buffers)) => {
                let mut line = Stored::line(&msg, kind, time);
                let stream = self.config.streams.as_deref().and_then(|streams| {
                    let (state, joined) = (&net.state, &mut net.streams);
                    share::stream_of(streams, joined, state, &msg, kind, &buffers, &origin)
                });
                let records = match stream {
                    Some(stream) => {
                        let last = self.recorder.last_seq;
                        let (id, mut h) =
                            stream.line(network, &line.raw, line.msgid.is_some(), last);
                        if let Some(raw) = h.shared_raw() {
                            line.raw = raw;
                        }
                        handing = Some(h);
                        let key = stream.key().clone();
                        let record = self.recorder.shared_record(
                            network,
                            &net.state,
                            line,
                            &buffers[0],
                            id,
                            key,
                        );
                        vec![record]
                    }
                    None => self.recorder.records(network, &net.state, line, &buffers),
                };
                (records.first().map(|r| r.seq), records, buffers)
            }
            None => (None, Vec::new(), Vec::new()),
        };
        // A detached channel's lines are stored, not relayed, unless one attaches it.
        let hold = detach::hold(net, &msg);
        if let (Some(hub), Some(first)) = (&self.config.push, records.first()) {
            // Chat lines only (one buffer each); the rules decide the rest. Never
            // waits: the push worker's queue is bounded and drops when full. A line
            // held in a detached channel is not pushed either; one that attaches it is.
            if !matches!(hold, detach::Hold::Keep)
                && matches!(first.command.as_str(), "PRIVMSG" | "ACTION")
            {
                hub.offer(&push::Line {
                    user: self.id,
                    network,
                    network_name: &net.config.name,
                    buffer: &first.buffer,
                    buffer_key: &first.buffer_key,
                    seq: first.seq,
                    time: first.time,
                    msg: &msg,
                    own_nick: &net.state.nick,
                    casemapping: net.state.isupport.casemapping,
                });
            }
        }
        if let Some(key) = left.filter(|k| net.detached.contains_key(k)) {
            // We left a detached channel: it is no longer detached.
            net.detached.remove(&key);
            match self
                .store
                .set_detached_fenced(&self.owner.fence, network, &key, false, None)
                .await
            {
                Ok(true) => {}
                Ok(false) => self.lost_ownership("detached flag"),
                Err(e) => {
                    warn!(user = %self.name, error = %e, "could not clear a detached flag");
                }
            }
        }
        if let detach::Hold::Reattach(key) = &hold {
            let name = self.nets[&network]
                .state
                .channels
                .get(key)
                .map_or_else(|| key.clone(), |c| c.name.clone());
            if let Err(e) = self.set_detached(network, &name, Some(false), None).await {
                warn!(user = %self.name, error = %e, "could not attach a channel");
            }
        }
        let net = self.nets.get_mut(&network).expect("caller checked");
        // Relay first: clients never wait for the store. The records follow at once,
        // before this actor reads another line, so anything a client has seen is
        // queued ahead of any flush the client can cause (replay, CHATHISTORY).
        if !matches!(hold, detach::Hold::Keep) {
            net.relay(
                &Outbound::Relay {
                    msg: Arc::new(msg),
                    seq,
                    time,
                    echo_of,
                    buffers: buffers.into(),
                },
                &self.config.counters,
            );
        }
        if let Some(at) = read_at.filter(|_| !net.clients.is_empty()) {
            let counters = &self.config.counters;
            counters.relay_seconds.observe(at.elapsed().as_secs_f64());
        }
        if !records.is_empty() {
            let n = records.len() as u64;
            self.config.counters.stored.inc_by(n);
            if self.writer.write_all(records).await.is_err() {
                warn!(user = %self.name, "backlog writer is gone; message not stored");
            }
        }
        // Queued: the writer may settle the event once it takes what is queued.
        drop(handing);
        if let Some(chan) = rejoined {
            // After the JOIN is stored: the fill's check against the backlog sees it.
            Box::pin(self.rejoined(network, &chan, time)).await;
        }
    }

    /// Our own joins, parts and nick changes, made durable. Returns false (and the
    /// actor ends) when the store refused a write because another node owns the
    /// user now.
    async fn own_changes(&mut self, network: NetworkId, effect: &Effect) -> bool {
        if let Some((name, joined)) = &effect.own_membership {
            if !self.membership_changed(network, name, *joined).await {
                self.lost_ownership("channel membership");
                return false;
            }
        }
        if let Some(nick) = &effect.own_nick {
            if !self.nick_changed(network, nick).await {
                self.lost_ownership("network nick");
                return false;
            }
        }
        true
    }

    /// We joined or left a channel: remember it (with its key) as wanted, durably.
    /// Returns false when the store refused the write because another node owns the
    /// user now.
    async fn membership_changed(&mut self, network: NetworkId, name: &[u8], joined: bool) -> bool {
        let net = self.nets.get_mut(&network).expect("caller checked");
        let key = net.state.fold(name);
        let chan_key = net.wanted.get(&key).and_then(|(_, k)| k.clone());
        if joined {
            net.wanted
                .insert(key.clone(), (name.to_vec(), chan_key.clone()));
        } else {
            net.wanted.remove(&key);
        }
        match self
            .store
            .set_channel_fenced(
                &self.owner.fence,
                network,
                name,
                &key,
                joined,
                chan_key.as_deref(),
            )
            .await
        {
            Ok(true) => true,
            Ok(false) => false,
            Err(e) => {
                warn!(user = %self.name, error = %e, "could not save channel membership");
                true
            }
        }
    }
}

/// Which kind of line this is and the buffers it is stored in, if it is stored:
/// other people's JOIN/PART/QUIT/NICK are not kept in channels of more than `max`
/// members.
fn stored_in(
    state: &NetState,
    msg: &Message,
    effect: Effect,
    max: usize,
) -> Option<(&'static str, Vec<Vec<u8>>)> {
    let kind = stored_kind(msg)?;
    let mut buffers = effect.buffers;
    if matches!(
        msg.command,
        Command::Join | Command::Part | Command::Quit | Command::Nick
    ) && effect.own_membership.is_none()
        && effect.own_nick.is_none()
    {
        buffers.retain(|b| state.member_count(b) <= max);
    }
    (!buffers.is_empty()).then_some((kind, buffers))
}

/// A line's server time, else now.
pub(super) fn line_time(msg: &Message) -> DateTime<Utc> {
    msg.tag("time")
        .and_then(irc::time::parse)
        .unwrap_or_else(Utc::now)
}

fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Which kind of line a person would want back, as stored.
pub fn stored_kind(msg: &Message) -> Option<&'static str> {
    Some(match msg.command {
        Command::Privmsg => match msg.param(1) {
            Some(text) if ctcp::action(text).is_some() => "ACTION",
            Some(text) if ctcp::parse(text).is_some() => return None,
            _ => "PRIVMSG",
        },
        Command::Notice => match msg.param(1) {
            Some(text) if ctcp::parse(text).is_some() => return None,
            _ => "NOTICE",
        },
        Command::Join => "JOIN",
        Command::Part => "PART",
        Command::Quit => "QUIT",
        Command::Nick => "NICK",
        Command::Kick => "KICK",
        Command::Mode => "MODE",
        Command::Topic => "TOPIC",
        _ => return None,
    })
}

/// The text form of a stored line, for display and search.
pub fn display_text(msg: &Message, kind: &str) -> String {
    let p = |i| msg.param_str(i).map(|s| s.into_owned()).unwrap_or_default();
    match kind {
        "PRIVMSG" | "NOTICE" => p(1),
        "ACTION" => msg
            .param(1)
            .and_then(ctcp::action)
            .map(|a| irc::decode(a).into_owned())
            .unwrap_or_default(),
        "PART" | "QUIT" => p(if kind == "PART" { 1 } else { 0 }),
        "KICK" => format!("{} {}", p(1), p(2)).trim_end().to_owned(),
        "NICK" => p(0),
        "TOPIC" => p(1),
        "MODE" => msg.params[1..]
            .iter()
            .map(|b| irc::decode(b).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}
