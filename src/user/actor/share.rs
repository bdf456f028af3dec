//! Which lines are shared with other users of the node, and the streams a network's
//! connection is in (see `user::streams`).
//!
//! A line is *shareable* when it came from the server (not synthesized by Ferry, not
//! a gap marker or fill, not our own echo or our own line), is stored in exactly one
//! buffer which is a channel we are in, and is a PRIVMSG, NOTICE, ACTION, JOIN, PART,
//! KICK, MODE or TOPIC that changes nothing of ours (not our own join, part, kick or
//! nick). Such a line takes its id from the channel's stream and its record names the
//! stream (`NewMessage::stream`); every other line is the user's own, as before.

use std::collections::HashMap;

use crate::irc::Message;
use crate::store::NetworkId;

use super::super::state::NetState;
use super::super::{Stream, Streams};

/// The streams one network connection is in: folded channel name → stream. The
/// connection's cursors are dropped when it leaves a channel, disconnects, or the
/// network goes away (on drop).
pub(super) struct NetStreams {
    conn: NetworkId,
    /// The server address as dialled (`host:port`, the host in lowercase).
    server: String,
    joined: HashMap<Vec<u8>, Stream>,
}

impl NetStreams {
    pub(super) fn new(conn: NetworkId, addr: &str) -> NetStreams {
        NetStreams {
            conn,
            server: addr.to_ascii_lowercase(),
            joined: HashMap::new(),
        }
    }

    /// We joined `key` (folded): lines of the channel from now on may confirm events
    /// other connections created from now on.
    pub(super) fn enter(&mut self, streams: &Streams, key: Vec<u8>) {
        let conn = self.conn;
        self.stream(streams, key).enter(conn);
    }

    /// We left `key` (folded).
    pub(super) fn leave(&mut self, key: &[u8]) {
        if let Some(stream) = self.joined.remove(key) {
            stream.leave(self.conn);
        }
    }

    /// The connection is gone: it is in no stream any more.
    pub(super) fn leave_all(&mut self) {
        for (_, stream) in self.joined.drain() {
            stream.leave(self.conn);
        }
    }

    /// The stream of channel `key` (folded), opened if we had none (a join we did not
    /// see, a casemapping change): its cursor then starts at the end.
    fn stream(&mut self, streams: &Streams, key: Vec<u8>) -> &Stream {
        let server = &self.server;
        self.joined
            .entry(key)
            .or_insert_with_key(|k| streams.open(server, k.clone()))
    }
}

impl Drop for NetStreams {
    fn drop(&mut self) {
        self.leave_all();
    }
}

/// What decides whether a line is shared, besides the line itself.
pub(super) struct Origin {
    /// The line came from the server (not from one of our clients, not made by Ferry).
    pub(super) from_server: bool,
    /// The line changes our own membership or nick.
    pub(super) own_change: bool,
}

/// The stream a line stored as `kind` in `buffers` belongs to, if it is shareable
/// (see the module comment).
pub(super) fn stream_of<'a>(
    streams: &Streams,
    joined: &'a mut NetStreams,
    state: &NetState,
    msg: &Message,
    kind: &str,
    buffers: &[Vec<u8>],
    origin: &Origin,
) -> Option<&'a Stream> {
    if !origin.from_server || origin.own_change {
        return None;
    }
    if !matches!(
        kind,
        "PRIVMSG" | "NOTICE" | "ACTION" | "JOIN" | "PART" | "KICK" | "MODE" | "TOPIC"
    ) {
        return None;
    }
    let [buffer] = buffers else {
        return None;
    };
    // Our own lines (echoes, or the server telling us what we did) are ours.
    match msg.source_nick() {
        Some(nick) if !state.is_me(nick) => {}
        _ => return None,
    }
    if !state.is_channel(buffer) {
        return None;
    }
    let key = state.fold(buffer);
    if !state.channels.contains_key(&key) {
        return None;
    }
    Some(joined.stream(streams, key))
}
