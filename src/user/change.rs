//! Typed state events: what the actor's live state of a network changed, as its
//! attached clients get it ([`Outbound::State`](super::Outbound::State)).
//!
//! Nick, ISUPPORT and member lists are tracked once, by the actor (`state::NetState`).
//! Every change it applies is queued as a [`StateChange`] while it applies the line
//! and sent to the network's clients right after the line's relay (so a client
//! handles the line with the state it was sent in, then the new state). A client
//! starts from the snapshot `Attached::view` and applies the changes that follow:
//! IRC clients keep our nick and ISUPPORT from them, websockets also their member
//! lists (`Attach::members`). No client reads NICK, `005` or NAMES lines to learn
//! state.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::irc::{ISupport, Message};
use crate::store::Seq;

/// One change to a network's live state.
#[derive(Clone, Debug, PartialEq)]
pub enum StateChange {
    /// Our nick on the network changed from `old` to `new`: a NICK of ours the server
    /// confirmed (`relayed`: the NICK line itself went to the clients first), or a
    /// registration under another nick than the last one (not relayed: a client that
    /// shows our nick is told with a NICK line of its own).
    Nick {
        old: Vec<u8>,
        new: Vec<u8>,
        relayed: bool,
    },
    /// The network's ISUPPORT changed (a `005`, or a new registration).
    ISupport(Arc<ISupport>),
    /// The full member list of a channel, after a NAMES reply ended (`366`): each
    /// reply replaces the list. Members as (prefix symbols, nick), sorted by nick.
    Members {
        channel: Vec<u8>,
        members: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// A change to member lists, as the actor applied it.
    Member(MemberChange),
    /// A gap marker was stored (see [`GapMarker`]).
    Gap(GapMarker),
}

impl StateChange {
    /// Whether only clients that keep member lists want it.
    pub fn is_members(&self) -> bool {
        matches!(self, StateChange::Members { .. } | StateChange::Member(_))
    }
}

/// A member joined, left, was renamed or got other prefixes. `own`: it is us (for
/// `Kicked`, we were kicked). Channel names as the line spelt them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    Joined {
        channel: Vec<u8>,
        nick: Vec<u8>,
        own: bool,
    },
    Parted {
        channel: Vec<u8>,
        nick: Vec<u8>,
        reason: Vec<u8>,
        own: bool,
    },
    Kicked {
        channel: Vec<u8>,
        nick: Vec<u8>,
        by: Vec<u8>,
        reason: Vec<u8>,
        own: bool,
    },
    /// Gone from every channel; `channels`: those we shared with them.
    Quit {
        nick: Vec<u8>,
        reason: Vec<u8>,
        channels: Vec<Vec<u8>>,
    },
    /// Renamed in every channel; `channels`: those we share with them.
    Renamed {
        old: Vec<u8>,
        new: Vec<u8>,
        channels: Vec<Vec<u8>>,
        own: bool,
    },
    /// A prefix mode changed: `prefixes` is what the member holds now (`@+`, or empty).
    Prefix {
        channel: Vec<u8>,
        nick: Vec<u8>,
        prefixes: Vec<u8>,
    },
}

/// A gap marker as it was stored (kind `GAP`): `text` in `buffer` with id `seq`,
/// covering the disconnect window `from..to` where it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GapMarker {
    pub buffer: Vec<u8>,
    pub seq: Seq,
    /// When the marker was written (its stored time).
    pub time: DateTime<Utc>,
    pub text: String,
    /// The window the marker stands for: from when messages may be missing, to
    /// when the channel was back.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The sender of gap markers: no IRC nick has a `*`.
pub const GAP_SENDER: &str = "*ferry*";

/// A gap marker's line as stored and as IRC clients get it: a NOTICE from
/// `*ferry*` to the channel.
pub fn gap_line(buffer: &[u8], text: &str) -> Bytes {
    let mut raw = b":*ferry*!ferry@ferry NOTICE ".to_vec();
    raw.extend_from_slice(buffer);
    raw.extend_from_slice(b" :");
    raw.extend_from_slice(text.as_bytes());
    Bytes::from(raw)
}

impl GapMarker {
    /// The NOTICE an IRC client gets for it (as [`gap_line`]).
    pub fn message(&self) -> Option<Message> {
        Message::parse(gap_line(&self.buffer, &self.text)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_line_is_a_notice_from_ferry() {
        let m = Message::parse(gap_line(b"#c", "[gap] 3 lines")).unwrap();
        assert_eq!(m.command.as_str(), "NOTICE");
        assert_eq!(m.source_nick(), Some(GAP_SENDER.as_bytes()));
        assert_eq!(m.param(0), Some(&b"#c"[..]));
        assert_eq!(m.param(1), Some(&b"[gap] 3 lines"[..]));
    }

    #[test]
    fn member_changes_are_for_member_lists_only() {
        let names = StateChange::Members {
            channel: b"#c".to_vec(),
            members: Vec::new(),
        };
        assert!(names.is_members());
        assert!(!StateChange::ISupport(Arc::default()).is_members());
    }
}
