//! Server → client events of the websocket protocol (`docs/websocket.md`), and the
//! translation of IRC lines (live or stored) into them.
//!
//! Two kinds of event: `message` events carry an `id` (the stored message's seq) and
//! are what resume replays; every other event describes *state* (members, topics,
//! connection state) and is never replayed: a reconnecting client gets a fresh `hello`
//! snapshot instead.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::irc::{self, Casemapping, ISupport, Message};
use crate::store::{Seq, StoredMessage};
use crate::user::{display_text, stored_kind, ConnState};

/// One line of a buffer, as stored (or about to be).
#[derive(Clone, Debug, Serialize)]
pub struct MessageEvent {
    /// The message id (per-user seq); `null` for a line that is not stored.
    pub id: Option<Seq>,
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    pub network: String,
    pub buffer: String,
    pub sender: String,
    /// PRIVMSG NOTICE ACTION JOIN PART QUIT NICK KICK MODE TOPIC GAP
    pub kind: String,
    pub text: String,
    /// Sent by us (the sender is our nick on the network).
    pub own: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub nick: String,
    /// Prefix symbols, highest first (`@`, `+`, `@+`), or empty.
    pub prefix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetworkInfo {
    pub id: i64,
    pub name: String,
    pub nick: String,
    /// `connecting`, `connected`, `disconnected`, `stopped`, with details.
    #[serde(flatten)]
    pub state: ConnState,
    /// Membership prefix modes and their symbols, highest rank first: `[["o","@"],…]`.
    pub prefix: Vec<(String, String)>,
    pub chantypes: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BufferInfo {
    pub network: String,
    pub name: String,
    /// `channel` or `query`.
    pub kind: &'static str,
    /// We are in the channel right now (always false for queries).
    pub joined: bool,
    pub topic: Option<String>,
    pub members: Vec<Member>,
    pub unread: i64,
    pub highlights: i64,
    pub read_marker: Seq,
}

/// Everything the server sends. Replies to a command carry its `id` as `re`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    Hello {
        user: String,
        /// The newest message id at connect time.
        last_id: Seq,
        networks: Vec<NetworkInfo>,
        buffers: Vec<BufferInfo>,
        /// Largest command frame accepted, in bytes.
        max_frame: usize,
    },
    /// Replay is done: every message up to `last_id` was sent; live events follow.
    Synced {
        last_id: Seq,
        replayed: u64,
    },
    Message(MessageEvent),
    Join {
        network: String,
        buffer: String,
        nick: String,
        own: bool,
    },
    Part {
        network: String,
        buffer: String,
        nick: String,
        reason: String,
        own: bool,
    },
    Kick {
        network: String,
        buffer: String,
        nick: String,
        by: String,
        reason: String,
        own: bool,
    },
    Quit {
        network: String,
        nick: String,
        reason: String,
    },
    Nick {
        network: String,
        old: String,
        new: String,
        own: bool,
    },
    Topic {
        network: String,
        buffer: String,
        topic: Option<String>,
        by: Option<String>,
    },
    Mode {
        network: String,
        target: String,
        by: String,
        /// The mode string and its arguments, e.g. `["+ov", "alice", "bob"]`.
        modes: Vec<String>,
    },
    /// The full member list of a channel (after a NAMES reply).
    Names {
        network: String,
        buffer: String,
        members: Vec<Member>,
    },
    Network(NetworkInfo),
    Buffer(BufferInfo),
    Read {
        network: String,
        buffer: String,
        id: Seq,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
        network: String,
        buffer: String,
        /// Oldest first.
        messages: Vec<MessageEvent>,
        /// Older messages exist.
        more: bool,
    },
    /// A server or bouncer notice that belongs to no buffer.
    Notice {
        network: String,
        text: String,
    },
    Ok {
        re: Option<Value>,
    },
    Pong {
        re: Option<Value>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<Value>,
        code: &'static str,
        message: String,
    },
    /// The session now runs elsewhere: reconnect to `url` and resume.
    Moved {
        url: String,
    },
}

impl ServerEvent {
    pub fn error(re: Option<Value>, code: &'static str, message: impl Into<String>) -> Self {
        ServerEvent::Error {
            re,
            code,
            message: message.into(),
        }
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What the translation needs to know about a network.
pub struct NetCtx<'a> {
    pub name: &'a str,
    pub nick: &'a [u8],
    pub isupport: &'a ISupport,
}

impl NetCtx<'_> {
    fn is_me(&self, nick: &[u8]) -> bool {
        self.isupport.casemapping.eq(nick, self.nick)
    }
}

/// A stored message as a `message` event.
pub fn from_stored(m: &StoredMessage, network: &str, nick: &[u8], cm: Casemapping) -> MessageEvent {
    MessageEvent {
        id: Some(m.seq),
        time: rfc3339(m.time),
        network: network.to_owned(),
        buffer: irc::decode(&m.buffer).into_owned(),
        own: cm.eq(m.sender.as_bytes(), nick),
        sender: m.sender.clone(),
        kind: m.command.clone(),
        text: m.text.clone(),
    }
}

/// The `message` events of a live line stored in `buffers` with ids `seq`, `seq+1`, ….
pub fn messages(
    msg: &Message,
    seq: Option<Seq>,
    time: DateTime<Utc>,
    buffers: &[Vec<u8>],
    n: &NetCtx<'_>,
) -> Vec<ServerEvent> {
    let (Some(seq), Some(kind)) = (seq, stored_kind(msg)) else {
        return Vec::new();
    };
    let sender = msg.source_nick().unwrap_or_default();
    // A stored NOTICE from `*ferry*` (no IRC nick has a `*`) is a gap marker: live
    // as in history, its kind is `GAP`.
    let kind = if kind == "NOTICE" && sender == b"*ferry*" {
        "GAP"
    } else {
        kind
    };
    let text = display_text(msg, if kind == "GAP" { "NOTICE" } else { kind });
    let t = rfc3339(DateTime::from_timestamp_millis(time.timestamp_millis()).unwrap_or(time));
    buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            ServerEvent::Message(MessageEvent {
                id: Some(seq + i as i64),
                time: t.clone(),
                network: n.name.to_owned(),
                buffer: irc::decode(b).into_owned(),
                sender: irc::decode(sender).into_owned(),
                kind: kind.to_owned(),
                text: text.clone(),
                own: n.is_me(sender),
            })
        })
        .collect()
}

/// Splits NAMES entries (`@+alice`, `bob!b@h`) into members, by the network's prefixes.
pub fn members_of(names: &[u8], is: &ISupport) -> Vec<Member> {
    names
        .split(|&b| b == b' ')
        .filter(|n| !n.is_empty())
        .map(|n| {
            let (prefix, nick) = is.split_prefixes(n);
            let nick = nick.split(|&b| b == b'!').next().unwrap_or_default();
            Member {
                nick: irc::decode(nick).into_owned(),
                prefix: irc::decode(prefix).into_owned(),
            }
        })
        .collect()
}

/// The state events of a live line (members, topics, modes); `message` events are
/// made by [`messages`]. NAMES (`353`/`366`) is gathered by the caller.
pub fn state_events(msg: &Message, n: &NetCtx<'_>) -> Vec<ServerEvent> {
    let net = || n.name.to_owned();
    let p = |i| msg.param_str(i).map(|s| s.into_owned()).unwrap_or_default();
    let source = msg.source_nick().unwrap_or_default();
    let src = irc::decode(source).into_owned();
    let own = n.is_me(source);
    let ev = match msg.command.as_str() {
        "JOIN" => ServerEvent::Join {
            network: net(),
            buffer: p(0),
            nick: src,
            own,
        },
        "PART" => ServerEvent::Part {
            network: net(),
            buffer: p(0),
            nick: src,
            reason: p(1),
            own,
        },
        "KICK" => ServerEvent::Kick {
            network: net(),
            buffer: p(0),
            own: msg.param(1).is_some_and(|t| n.is_me(t)),
            nick: p(1),
            by: src,
            reason: p(2),
        },
        "QUIT" => ServerEvent::Quit {
            network: net(),
            nick: src,
            reason: p(0),
        },
        "NICK" => ServerEvent::Nick {
            network: net(),
            old: src,
            new: p(0),
            own,
        },
        "TOPIC" => ServerEvent::Topic {
            network: net(),
            buffer: p(0),
            topic: Some(p(1)).filter(|t| !t.is_empty()),
            by: Some(src),
        },
        "332" => ServerEvent::Topic {
            network: net(),
            buffer: p(1),
            topic: Some(p(2)).filter(|t| !t.is_empty()),
            by: None,
        },
        "331" => ServerEvent::Topic {
            network: net(),
            buffer: p(1),
            topic: None,
            by: None,
        },
        "MODE" if msg.params.len() > 1 => ServerEvent::Mode {
            network: net(),
            target: p(0),
            by: src,
            modes: msg.params[1..]
                .iter()
                .map(|b| irc::decode(b).into_owned())
                .collect(),
        },
        "NOTICE" if msg.prefix.as_deref() == Some(b"ferry") => ServerEvent::Notice {
            network: net(),
            text: p(1),
        },
        c if is_error_numeric(c) => ServerEvent::Notice {
            network: net(),
            // Skip our own nick (the first parameter).
            text: msg.params[1.min(msg.params.len())..]
                .iter()
                .map(|b| irc::decode(b).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        },
        _ => return Vec::new(),
    };
    vec![ev]
}

/// Numeric error replies (400–599) a person should see, e.g. "No such channel".
fn is_error_numeric(c: &str) -> bool {
    c.len() == 3
        && (c.starts_with('4') || c.starts_with('5'))
        && c.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn quit_in_two_channels_gets_two_ids() {
        let is = ISupport::default();
        let n = NetCtx {
            name: "net",
            nick: b"me",
            isupport: &is,
        };
        let evs = messages(
            &parse(":bob!b@h QUIT :bye"),
            Some(7),
            Utc::now(),
            &[b"#a".to_vec(), b"#b".to_vec()],
            &n,
        );
        let ids: Vec<_> = evs
            .iter()
            .map(|e| match e {
                ServerEvent::Message(m) => (m.id, m.buffer.clone(), m.text.clone()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                (Some(7), "#a".into(), "bye".into()),
                (Some(8), "#b".into(), "bye".into())
            ]
        );
        assert!(messages(&parse(":bob!b@h QUIT :bye"), None, Utc::now(), &[], &n).is_empty());
    }

    #[test]
    fn own_action_and_latin1() {
        let is = ISupport::default();
        let n = NetCtx {
            name: "net",
            nick: b"Me",
            isupport: &is,
        };
        let m = parse(":me!u@h PRIVMSG #c :\x01ACTION waves\x01");
        let ServerEvent::Message(e) = &messages(&m, Some(1), Utc::now(), &[b"#c".to_vec()], &n)[0]
        else {
            panic!()
        };
        assert_eq!(
            (e.kind.as_str(), e.text.as_str(), e.own),
            ("ACTION", "waves", true)
        );
        let latin1 = Message::new("PRIVMSG", [&b"#c"[..], &b"caf\xe9"[..]])
            .with_prefix(Bytes::from_static(b"x!y@z"));
        let ServerEvent::Message(e) =
            &messages(&latin1, Some(2), Utc::now(), &[b"#c".to_vec()], &n)[0]
        else {
            panic!()
        };
        assert_eq!(e.text, "café");
    }

    #[test]
    fn names_split_prefixes() {
        let is = ISupport::default();
        let m = members_of(b"@+alice bob!b@h +carol", &is);
        let got: Vec<_> = m
            .iter()
            .map(|m| (m.prefix.as_str(), m.nick.as_str()))
            .collect();
        assert_eq!(got, vec![("@+", "alice"), ("", "bob"), ("+", "carol")]);
    }
}
