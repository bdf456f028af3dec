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
use crate::store::{ReattachOn, Seq, StoredMessage};
use crate::user::change::GAP_SENDER;
use crate::user::{display_text, stored_kind, ConnState, GapMarker, MemberChange};

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
    /// `connecting`, `registering`, `connected`, `disconnected`, `stopped`, with
    /// details.
    #[serde(flatten)]
    pub state: ConnState,
    /// Membership prefix modes and their symbols, highest rank first: `[["o","@"],…]`.
    pub prefix: Vec<(String, String)>,
    pub chantypes: String,
    /// While connected: the network's MOTD from registration (`372` texts, decoded,
    /// formatting codes as sent); absent when the server had none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub motd: Option<Vec<String>>,
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
    /// A detached channel: logged, but its lines are not sent until it is attached
    /// again (by `attach`, or by itself as `reattach_on` says).
    pub detached: bool,
    /// What attaches it by itself: `message`, `highlight` or `none`.
    pub reattach_on: ReattachOn,
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
    /// A channel was detached or attached again (by any client, BouncerServ, the
    /// API, or a line that attached it).
    Channel {
        network: String,
        buffer: String,
        detached: bool,
        reattach_on: ReattachOn,
    },
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
    /// Text from the bouncer or the server that is not a stored message: the
    /// bouncer's notices, server notices, numeric replies and errors, invites.
    Notice {
        network: String,
        text: String,
        /// The IRC command or numeric it came from (`"311"`, `"NOTICE"`,
        /// `"INVITE"`); `None` for the bouncer's own notices.
        code: Option<String>,
        /// Who sent it (a server name or a nick); `None` for the bouncer.
        from: Option<String>,
        /// The channel (or, for an error or an away reply, the nick) it concerns.
        buffer: Option<String>,
        /// An error reply (numerics 400–599).
        error: bool,
        /// A reply to this client's own query (the bouncer sent it to this client
        /// alone), to be shown where the person asked.
        reply: bool,
        /// A numeric's parameters after our nick, as sent (e.g. `322`: channel,
        /// users, topic); empty for other lines.
        params: Vec<String>,
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
    let text = display_text(msg, kind);
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

/// A gap marker the actor stored, as the `message` event it is in history too
/// (kind `GAP`, sender `*ferry*`).
pub fn gap(g: &GapMarker, network: &str) -> ServerEvent {
    ServerEvent::Message(MessageEvent {
        id: Some(g.seq),
        time: rfc3339(g.time),
        network: network.to_owned(),
        buffer: irc::decode(&g.buffer).into_owned(),
        sender: GAP_SENDER.to_owned(),
        kind: "GAP".to_owned(),
        text: g.text.clone(),
        own: false,
    })
}

/// A member list as the actor keeps it ((prefixes, nick) pairs) as `members[]`.
pub fn members(m: &[(Vec<u8>, Vec<u8>)]) -> Vec<Member> {
    m.iter()
        .map(|(p, n)| Member {
            nick: irc::decode(n).into_owned(),
            prefix: irc::decode(p).into_owned(),
        })
        .collect()
}

/// A member change the actor applied as its event (`join`, `part`, `kick`, `quit`,
/// `nick`). A prefix change is `None`: the `mode` event of its line carries it.
pub fn member_event(change: &MemberChange, network: &str) -> Option<ServerEvent> {
    let s = |b: &[u8]| irc::decode(b).into_owned();
    let network = network.to_owned();
    Some(match change {
        MemberChange::Joined { channel, nick, own } => ServerEvent::Join {
            network,
            buffer: s(channel),
            nick: s(nick),
            own: *own,
        },
        MemberChange::Parted {
            channel,
            nick,
            reason,
            own,
        } => ServerEvent::Part {
            network,
            buffer: s(channel),
            nick: s(nick),
            reason: s(reason),
            own: *own,
        },
        MemberChange::Kicked {
            channel,
            nick,
            by,
            reason,
            own,
        } => ServerEvent::Kick {
            network,
            buffer: s(channel),
            nick: s(nick),
            by: s(by),
            reason: s(reason),
            own: *own,
        },
        MemberChange::Quit { nick, reason, .. } => ServerEvent::Quit {
            network,
            nick: s(nick),
            reason: s(reason),
        },
        MemberChange::Renamed { old, new, own, .. } => ServerEvent::Nick {
            network,
            old: s(old),
            new: s(new),
            own: *own,
        },
        MemberChange::Prefix { .. } => return None,
    })
}

/// The events of a live line that are not stored messages nor member changes
/// (topics, modes) and the text of the lines that are not stored (server notices,
/// numerics); `message` events are made by [`messages`], member changes come from
/// the actor's typed state changes ([`member_event`], `names`).
pub fn state_events(msg: &Message, n: &NetCtx<'_>) -> Vec<ServerEvent> {
    events(msg, n, false)
}

/// The events of a reply to this client's own query (a line the bouncer sent to it
/// alone): as [`state_events`], and numerics that only answer a query are shown.
pub fn reply_events(msg: &Message, n: &NetCtx<'_>) -> Vec<ServerEvent> {
    events(msg, n, true)
}

fn events(msg: &Message, n: &NetCtx<'_>, reply: bool) -> Vec<ServerEvent> {
    let net = || n.name.to_owned();
    let p = |i| msg.param_str(i).map(|s| s.into_owned()).unwrap_or_default();
    let source = msg.source_nick().unwrap_or_default();
    let src = irc::decode(source).into_owned();
    let mut evs = Vec::new();
    let ev = match msg.command.as_str() {
        "TOPIC" => ServerEvent::Topic {
            network: net(),
            buffer: p(0),
            topic: Some(p(1)).filter(|t| !t.is_empty()),
            by: Some(src),
        },
        "332" | "331" => {
            if reply {
                evs.push(numeric_notice(msg, n, true));
            }
            ServerEvent::Topic {
                network: net(),
                buffer: p(1),
                topic: Some(p(2)).filter(|t| msg.command == "332" && !t.is_empty()),
                by: None,
            }
        }
        // From the line: the actor tracks member prefixes and our user modes but
        // not channel modes (`+m`, keys, lists), so no typed state carries them.
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
            code: None,
            from: None,
            buffer: None,
            error: false,
            reply,
            params: Vec::new(),
        },
        // From a server (no user@host) to us: not a conversation, so not stored.
        "NOTICE"
            if !msg
                .prefix
                .as_deref()
                .is_some_and(|p| p.contains(&b'!') || p.contains(&b'@'))
                && !n.isupport.is_channel(msg.param(0).unwrap_or_default()) =>
        {
            text_notice(msg, n, p(1), None, reply)
        }
        "INVITE" => {
            let text = if msg.param(0).is_some_and(|t| n.is_me(t)) {
                format!("{src} invites you to {}", p(1))
            } else {
                format!("{src} invited {} to {}", p(0), p(1))
            };
            text_notice(msg, n, text, Some(p(1)), reply)
        }
        "WALLOPS" => text_notice(msg, n, p(0), None, reply),
        c if is_numeric(c) => {
            if !reply && QUERY_ONLY.contains(&c) {
                return evs;
            }
            numeric_notice(msg, n, reply)
        }
        _ => return evs,
    };
    evs.push(ev);
    evs
}

/// Numerics that only answer a query some client made (often automatically, like
/// irssi's `WHO` and `MODE` on join): shown to the client that asked, never to
/// the others. NAMES (`353`/`366`) becomes a `names` event instead.
const QUERY_ONLY: &[&str] = &[
    "005", "302", "303", "315", "324", "329", "333", "346", "347", "348", "349", "352", "353",
    "354", "366", "367", "368", "728", "729",
];

fn is_numeric(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit())
}

/// Numeric error replies (400–599) a person should see, e.g. "No such channel".
fn is_error_numeric(c: &str) -> bool {
    is_numeric(c) && (c.starts_with('4') || c.starts_with('5'))
}

/// A line from the server or another person that is not stored, as a `notice`.
fn text_notice(
    msg: &Message,
    n: &NetCtx<'_>,
    text: String,
    buffer: Option<String>,
    reply: bool,
) -> ServerEvent {
    ServerEvent::Notice {
        network: n.name.to_owned(),
        text,
        code: Some(msg.command.as_str().to_owned()),
        from: msg.source_nick().map(|nick| irc::decode(nick).into_owned()),
        buffer,
        error: false,
        reply,
        params: Vec::new(),
    }
}

/// A numeric reply as a `notice`: its text made readable, the buffer it concerns.
fn numeric_notice(msg: &Message, n: &NetCtx<'_>, reply: bool) -> ServerEvent {
    let c = msg.command.as_str();
    let error = is_error_numeric(c);
    // Middle parameters after our nick (the last one is the text).
    let middle: Vec<&[u8]> = msg
        .params
        .iter()
        .skip(1)
        .take(msg.params.len().saturating_sub(2))
        .map(|b| &b[..])
        .collect();
    let buffer = match c {
        // `341 me nick #chan`, `319 me nick :#a #b`, `322 me #chan 5 :topic`.
        "341" => msg.param(2),
        "319" | "322" => None,
        "301" => msg.param(1),
        _ => middle
            .iter()
            .copied()
            .find(|p| n.isupport.is_channel(p))
            .or_else(|| middle.first().copied().filter(|_| error)),
    }
    .map(|b| irc::decode(b).into_owned());
    ServerEvent::Notice {
        network: n.name.to_owned(),
        text: numeric_text(msg),
        code: Some(c.to_owned()),
        from: msg.prefix.as_deref().map(|p| irc::decode(p).into_owned()),
        buffer,
        error,
        reply,
        params: msg
            .params
            .iter()
            .skip(1)
            .map(|b| irc::decode(b).into_owned())
            .collect(),
    }
}

/// A numeric reply in words: the common ones (WHOIS, LIST, MODE, away, invite,
/// MOTD) by their meaning, others as `middle params: text`.
fn numeric_text(msg: &Message) -> String {
    let p = |i| msg.param_str(i).map(|s| s.into_owned()).unwrap_or_default();
    let count = |n: &str, one: &str, many: &str| match n {
        "1" => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    match msg.command.as_str() {
        "221" => format!("Your user modes: {}", join(&msg.params[1..])),
        "301" => format!("{} is away: {}", p(1), p(2)),
        "311" => format!("{} is {}@{} ({})", p(1), p(2), p(3), p(5)),
        "314" => format!("{} was {}@{} ({})", p(1), p(2), p(3), p(5)),
        "312" => format!("{} is on {} ({})", p(1), p(2), p(3)),
        "317" => {
            let idle = p(2).parse::<i64>().map(duration).unwrap_or_else(|_| p(2));
            match p(3).parse::<i64>().ok().and_then(stamp) {
                Some(on) if msg.params.len() > 4 => {
                    format!("{} has been idle {idle}, signed on {on}", p(1))
                }
                _ => format!("{} has been idle {idle}", p(1)),
            }
        }
        "319" => format!("{} is on {}", p(1), p(2)),
        "330" => format!("{} is logged in as {}", p(1), p(2)),
        "322" => format!("{} ({}): {}", p(1), count(&p(2), "user", "users"), p(3)),
        "324" => format!("{} modes: {}", p(1), join(&msg.params[2..])),
        "329" => match p(2).parse::<i64>().ok().and_then(stamp) {
            Some(t) => format!("{} was created {t}", p(1)),
            None => format!("{} was created {}", p(1), p(2)),
        },
        "333" => match p(3).parse::<i64>().ok().and_then(stamp) {
            Some(t) => format!("Topic of {} set by {} {t}", p(1), p(2)),
            None => format!("Topic of {} set by {}", p(1), p(2)),
        },
        "331" => format!("{} has no topic", p(1)),
        "332" => format!("Topic of {}: {}", p(1), p(2)),
        "341" => format!("Inviting {} to {}", p(1), p(2)),
        "353" => format!("Users on {}: {}", p(2), p(3)),
        "367" | "346" | "348" | "728" => {
            let what = match msg.command.as_str() {
                "367" => "ban",
                "346" => "invite exception",
                "348" => "ban exception",
                _ => "quiet",
            };
            let mask = if msg.command == "728" { p(3) } else { p(2) };
            let (by, at) = if msg.command == "728" {
                (p(4), p(5))
            } else {
                (p(3), p(4))
            };
            match at.parse::<i64>().ok().and_then(stamp) {
                Some(t) if !by.is_empty() => format!("{} {what} {mask} (set by {by} {t})", p(1)),
                _ => format!("{} {what} {mask}", p(1)),
            }
        }
        "372" => p(1)
            .strip_prefix("- ")
            .map(str::to_owned)
            .unwrap_or_else(|| p(1)),
        _ => {
            let n = msg.params.len();
            let text = msg.param_str(n.saturating_sub(1)).unwrap_or_default();
            if n > 2 && text.trim().is_empty() {
                join(&msg.params[1..n - 1])
            } else if n > 2 {
                format!("{}: {text}", join(&msg.params[1..n - 1]))
            } else {
                text.into_owned()
            }
        }
    }
}

fn join(params: &[bytes::Bytes]) -> String {
    params
        .iter()
        .map(|b| irc::decode(b).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds as `2d 3h`, `5m 12s`, `40s`.
fn duration(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A Unix time as `2025-01-02 10:00 UTC`.
fn stamp(t: i64) -> Option<String> {
    DateTime::from_timestamp(t, 0).map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
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
    fn member_changes_and_gaps_become_events() {
        let json = |ev: Option<ServerEvent>| serde_json::to_value(ev.unwrap()).unwrap();
        let kick = MemberChange::Kicked {
            channel: b"#c".to_vec(),
            nick: b"me".to_vec(),
            by: b"op".to_vec(),
            reason: b"out".to_vec(),
            own: true,
        };
        assert_eq!(
            json(member_event(&kick, "net")),
            serde_json::json!({"type": "kick", "network": "net", "buffer": "#c",
                "nick": "me", "by": "op", "reason": "out", "own": true})
        );
        let renamed = MemberChange::Renamed {
            old: b"bob".to_vec(),
            new: b"bobby".to_vec(),
            channels: vec![b"#c".to_vec()],
            own: false,
        };
        assert_eq!(
            json(member_event(&renamed, "net")),
            serde_json::json!({"type": "nick", "network": "net", "old": "bob",
                "new": "bobby", "own": false})
        );
        let prefix = MemberChange::Prefix {
            channel: b"#c".to_vec(),
            nick: b"bob".to_vec(),
            prefixes: b"@".to_vec(),
        };
        assert!(
            member_event(&prefix, "net").is_none(),
            "the line's `mode` event"
        );
        let members = members(&[
            (b"@+".to_vec(), b"alice".to_vec()),
            (vec![], b"bob".to_vec()),
        ]);
        let got: Vec<_> = members
            .iter()
            .map(|m| (m.prefix.as_str(), m.nick.as_str()))
            .collect();
        assert_eq!(got, vec![("@+", "alice"), ("", "bob")]);
        let t = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let marker = GapMarker {
            buffer: b"#c".to_vec(),
            seq: 42,
            time: t,
            text: "[gap] lost".into(),
            from: t,
            to: t,
        };
        assert_eq!(
            serde_json::to_value(gap(&marker, "net")).unwrap(),
            serde_json::json!({"type": "message", "id": 42, "time": "2023-11-14T22:13:20.123Z",
                "network": "net", "buffer": "#c", "sender": "*ferry*", "kind": "GAP",
                "text": "[gap] lost", "own": false})
        );
    }

    fn notice(ev: &ServerEvent) -> (String, Option<String>, Option<String>, bool, bool) {
        match ev {
            ServerEvent::Notice {
                text,
                code,
                buffer,
                error,
                reply,
                ..
            } => (text.clone(), code.clone(), buffer.clone(), *error, *reply),
            other => panic!("not a notice: {other:?}"),
        }
    }

    #[test]
    fn numerics_become_readable_notices() {
        let is = ISupport::default();
        let n = NetCtx {
            name: "net",
            nick: b"me",
            isupport: &is,
        };
        let one = |line: &str, reply: bool| {
            let m = parse(line);
            let evs = if reply {
                reply_events(&m, &n)
            } else {
                state_events(&m, &n)
            };
            assert_eq!(evs.len(), 1, "{line}: {evs:?}");
            notice(&evs[0])
        };
        assert_eq!(
            one(":irc.x 311 me bob ~b 10.0.0.1 * :Bob Builder", true),
            (
                "bob is ~b@10.0.0.1 (Bob Builder)".into(),
                Some("311".into()),
                None,
                false,
                true
            )
        );
        assert_eq!(
            one(
                ":irc.x 317 me bob 330 1700000000 :seconds idle, signon time",
                true
            )
            .0,
            "bob has been idle 5m 30s, signed on 2023-11-14 22:13 UTC"
        );
        assert_eq!(
            one(":irc.x 401 me nobody :No such nick/channel", true),
            (
                "nobody: No such nick/channel".into(),
                Some("401".into()),
                Some("nobody".into()),
                true,
                true
            )
        );
        // Not our query: an error still shows, in the channel it names.
        assert_eq!(
            one(":irc.x 482 me #c :You're not channel operator", false),
            (
                "#c: You're not channel operator".into(),
                Some("482".into()),
                Some("#c".into()),
                true,
                false
            )
        );
        assert_eq!(one(":irc.x 341 me bob #c", false).2.as_deref(), Some("#c"));
        assert_eq!(
            one(":irc.x 322 me #c 1 :[+nt] a topic", true).0,
            "#c (1 user): [+nt] a topic"
        );
        assert_eq!(one(":irc.x 372 me :- Welcome!", false).0, "Welcome!");
        assert_eq!(
            one(":irc.x 351 me InspIRCd-3. irc.x :", false).0,
            "InspIRCd-3. irc.x"
        );
        assert_eq!(
            one(":irc.x 306 me :You have been marked as being away", false).0,
            "You have been marked as being away"
        );
        // Server notices and invites are not stored: they come as notices.
        let (text, code, ..) = one(":irc.x NOTICE me :*** You are exempt", false);
        assert_eq!(
            (text.as_str(), code.as_deref()),
            ("*** You are exempt", Some("NOTICE"))
        );
        assert_eq!(
            one(":bob!b@h INVITE me #secret", false).0,
            "bob invites you to #secret"
        );
        // Replies to other clients' automatic queries stay out of the web client.
        for line in [
            ":irc.x 352 me #c b h irc.x bob H :0 Bob",
            ":irc.x 315 me #c :End of /WHO list.",
            ":irc.x 324 me #c +nt",
            ":irc.x 333 me #c bob 1700000000",
        ] {
            assert!(state_events(&parse(line), &n).is_empty(), "{line}");
        }
        assert_eq!(
            one(":irc.x 324 me #c +ntk key", true).0,
            "#c modes: +ntk key"
        );
        // A user's NOTICE is a stored message, not a notice event.
        assert!(state_events(&parse(":bob!b@h NOTICE me :hi"), &n).is_empty());
    }
}
