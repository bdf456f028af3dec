//! Client → server commands of the websocket protocol, parsed and checked.
//!
//! Parsing never trusts the client: names cannot smuggle a second IRC line (no CR,
//! LF or NUL anywhere; no spaces or commas in channel names and nicks), and text with
//! line breaks becomes one message per line.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::irc::Message;
use crate::store::Seq;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// First frame of a connection: the last message id the client saw (`null`: none).
    Resume {
        #[serde(default)]
        id: Option<Value>,
        last_id: Option<Seq>,
    },
    Send {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        buffer: String,
        text: String,
        /// Send as `/me` (CTCP ACTION).
        #[serde(default)]
        action: bool,
        #[serde(default)]
        notice: bool,
    },
    Join {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        channel: String,
        #[serde(default)]
        key: Option<String>,
    },
    Part {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        channel: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Detaches a channel: we stay in it and it is logged, but its lines are not
    /// sent until it is attached again (`PART #c detach`, soju's syntax).
    Detach {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        channel: String,
    },
    /// Attaches a detached channel again (`JOIN #c`).
    Attach {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        channel: String,
    },
    /// Opens a private conversation (a buffer of its own; nothing is sent upstream).
    Query {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        nick: String,
    },
    Topic {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        channel: String,
        topic: String,
    },
    Nick {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        nick: String,
    },
    /// `WHOIS nick`: the replies come back as `notice` events with `reply: true`.
    Whois {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        nick: String,
    },
    /// `MODE target [modes [args…]]`: without `modes`, asks for the current ones.
    Mode {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        target: String,
        /// The mode string and its arguments, e.g. `["+ob", "bob", "eve!*@*"]`.
        #[serde(default)]
        modes: Vec<String>,
    },
    Kick {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        channel: String,
        nick: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Invite {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        nick: String,
        channel: String,
    },
    /// Marks us away with `text`; without text (or empty), back.
    Away {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// `LIST [mask]`: the channels of the network, as `notice` events.
    List {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        #[serde(default)]
        mask: Option<String>,
    },
    /// One IRC line sent as it is (`/raw`, `/quote`), e.g. `"MOTD"`.
    Raw {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        line: String,
    },
    Read {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        buffer: String,
        /// The id of the last message read.
        last_id: Seq,
    },
    History {
        #[serde(default)]
        id: Option<Value>,
        network: String,
        buffer: String,
        /// Only messages older than this id (default: the newest).
        #[serde(default)]
        before: Option<Seq>,
        #[serde(default)]
        limit: Option<i64>,
    },
    Ping {
        #[serde(default)]
        id: Option<Value>,
    },
    /// Whether the person is looking at this client (the tab is visible and
    /// focused): while any web client is, nothing is pushed (Web Push).
    Focus {
        #[serde(default)]
        id: Option<Value>,
        focused: bool,
    },
}

impl Command {
    /// The command's `id`, echoed as `re` in its reply.
    pub fn id(&self) -> Option<Value> {
        match self {
            Command::Resume { id, .. }
            | Command::Send { id, .. }
            | Command::Join { id, .. }
            | Command::Part { id, .. }
            | Command::Detach { id, .. }
            | Command::Attach { id, .. }
            | Command::Query { id, .. }
            | Command::Topic { id, .. }
            | Command::Nick { id, .. }
            | Command::Whois { id, .. }
            | Command::Mode { id, .. }
            | Command::Kick { id, .. }
            | Command::Invite { id, .. }
            | Command::Away { id, .. }
            | Command::List { id, .. }
            | Command::Raw { id, .. }
            | Command::Read { id, .. }
            | Command::History { id, .. }
            | Command::Ping { id }
            | Command::Focus { id, .. } => id.clone(),
        }
    }

    /// The network a command acts on, if any.
    pub fn network(&self) -> Option<&str> {
        match self {
            Command::Send { network, .. }
            | Command::Join { network, .. }
            | Command::Part { network, .. }
            | Command::Detach { network, .. }
            | Command::Attach { network, .. }
            | Command::Query { network, .. }
            | Command::Topic { network, .. }
            | Command::Nick { network, .. }
            | Command::Whois { network, .. }
            | Command::Mode { network, .. }
            | Command::Kick { network, .. }
            | Command::Invite { network, .. }
            | Command::Away { network, .. }
            | Command::List { network, .. }
            | Command::Raw { network, .. }
            | Command::Read { network, .. }
            | Command::History { network, .. } => Some(network),
            Command::Resume { .. } | Command::Ping { .. } | Command::Focus { .. } => None,
        }
    }
}

/// The IRC lines a command sends upstream. The commands the websocket session
/// answers itself (`resume`, `query`, `read`, `history`, `ping`, `focus`) send none.
pub fn irc_lines(cmd: &Command) -> Result<Vec<Message>, Invalid> {
    let one = |m: Result<Message, Invalid>| m.map(|m| vec![m]);
    match cmd {
        Command::Send {
            buffer,
            text,
            action,
            notice,
            ..
        } => send_lines(buffer, text, *action, *notice),
        Command::Join { channel, key, .. } => one(join(channel, key.as_deref())),
        Command::Part {
            channel, reason, ..
        } => one(part(channel, reason.as_deref())),
        Command::Detach { channel, .. } => one(part(channel, Some("detach"))),
        Command::Attach { channel, .. } => one(join(channel, None)),
        Command::Topic { channel, topic, .. } => one(self::topic(channel, topic)),
        Command::Nick { nick, .. } => one(self::nick(nick)),
        Command::Whois { nick, .. } => one(name("nick", nick).map(|n| Message::new("WHOIS", [n]))),
        Command::Mode { target, modes, .. } => one(mode(target, modes)),
        Command::Kick {
            channel,
            nick,
            reason,
            ..
        } => one(kick(channel, nick, reason.as_deref())),
        Command::Invite { nick, channel, .. } => one(name("nick", nick)
            .and_then(|n| Ok(Message::new("INVITE", [n, name("channel", channel)?])))),
        Command::Away { text, .. } => one(away(text.as_deref())),
        Command::List { mask, .. } => one(match mask.as_deref().filter(|m| !m.is_empty()) {
            None => Ok(Message::new("LIST", Vec::<Bytes>::new())),
            Some(m) => name("mask", m).map(|m| Message::new("LIST", [m])),
        }),
        Command::Raw { line, .. } => one(raw(line)),
        Command::Resume { .. }
        | Command::Query { .. }
        | Command::Read { .. }
        | Command::History { .. }
        | Command::Ping { .. }
        | Command::Focus { .. } => Err("this command sends nothing upstream".into()),
    }
}

/// Parses a frame; on failure returns the `id` if one could be read, and why.
pub fn parse(text: &str) -> Result<Command, (Option<Value>, String)> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| (None, format!("invalid JSON: {e}")))?;
    let id = value.get("id").cloned();
    if !value.is_object() {
        return Err((id, "a command is a JSON object with a \"type\"".into()));
    }
    serde_json::from_value(value).map_err(|e| (id, format!("invalid command: {e}")))
}

/// A problem with a command's arguments, shown to the client as `bad_request`.
pub type Invalid = String;

fn clean(what: &str, s: &str) -> Result<Bytes, Invalid> {
    if s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(format!("{what} must not contain line breaks"));
    }
    Ok(Bytes::copy_from_slice(s.as_bytes()))
}

/// A channel name or nick: one non-empty word without commas, not starting with
/// `:` (which would make it the last parameter of the line).
fn name(what: &str, s: &str) -> Result<Bytes, Invalid> {
    if s.is_empty()
        || s.len() > 200
        || s.starts_with(':')
        || s.bytes().any(|b| b <= b' ' || b == b',')
    {
        return Err(format!("invalid {what} {s:?}"));
    }
    clean(what, s)
}

/// The PRIVMSG/NOTICE lines for a `send` (one per non-empty line of text).
pub fn send_lines(
    buffer: &str,
    text: &str,
    action: bool,
    notice: bool,
) -> Result<Vec<Message>, Invalid> {
    let target = name("buffer", buffer)?;
    let command = if notice && !action {
        "NOTICE"
    } else {
        "PRIVMSG"
    };
    let lines: Vec<Message> = text
        .split(['\n', '\r'])
        .map(|l| l.replace('\0', ""))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let body = if action {
                format!("\x01ACTION {l}\x01")
            } else {
                l
            };
            Message::new(command, [target.clone(), Bytes::from(body)])
        })
        .collect();
    if lines.is_empty() {
        return Err("nothing to send".into());
    }
    Ok(lines)
}

pub fn join(channel: &str, key: Option<&str>) -> Result<Message, Invalid> {
    let mut params = vec![name("channel", channel)?];
    if let Some(k) = key.filter(|k| !k.is_empty()) {
        params.push(name("key", k)?);
    }
    Ok(Message::new("JOIN", params))
}

pub fn part(channel: &str, reason: Option<&str>) -> Result<Message, Invalid> {
    let mut params = vec![name("channel", channel)?];
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        params.push(clean("reason", r)?);
    }
    Ok(Message::new("PART", params))
}

pub fn topic(channel: &str, topic: &str) -> Result<Message, Invalid> {
    Ok(Message::new(
        "TOPIC",
        [name("channel", channel)?, clean("topic", topic)?],
    ))
}

pub fn nick(nick: &str) -> Result<Message, Invalid> {
    Ok(Message::new("NICK", [name("nick", nick)?]))
}

/// A mode argument: one word (a nick, a mask, a key, a limit).
fn word(what: &str, s: &str) -> Result<Bytes, Invalid> {
    if s.is_empty() || s.len() > 200 || s.starts_with(':') || s.bytes().any(|b| b <= b' ') {
        return Err(format!("invalid {what} {s:?}"));
    }
    clean(what, s)
}

/// `MODE target [modes args…]`.
pub fn mode(target: &str, modes: &[String]) -> Result<Message, Invalid> {
    let mut params = vec![name("target", target)?];
    if let Some((m, args)) = modes.split_first() {
        if !m.starts_with(['+', '-'])
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'+' || b == b'-')
        {
            return Err(format!(
                "invalid mode string {m:?}: expected + or - and letters, e.g. \"+o\""
            ));
        }
        params.push(Bytes::copy_from_slice(m.as_bytes()));
        for a in args {
            params.push(word("mode argument", a)?);
        }
    }
    Ok(Message::new("MODE", params))
}

pub fn kick(channel: &str, nick: &str, reason: Option<&str>) -> Result<Message, Invalid> {
    let mut params = vec![name("channel", channel)?, name("nick", nick)?];
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        params.push(clean("reason", r)?);
    }
    Ok(Message::new("KICK", params))
}

/// `AWAY :text`, or `AWAY` (back) without text.
pub fn away(text: Option<&str>) -> Result<Message, Invalid> {
    Ok(match text.filter(|t| !t.trim().is_empty()) {
        Some(t) => Message::new("AWAY", [clean("away text", t)?]),
        None => Message::new("AWAY", Vec::<Bytes>::new()),
    })
}

/// Longest line `raw` takes (the bouncer splits long PRIVMSGs itself).
const RAW_MAX: usize = 4096;

/// Commands `raw` refuses: the bouncer owns registration and the connection.
const NOT_RAW: &[&str] = &[
    "CAP",
    "PASS",
    "USER",
    "AUTHENTICATE",
    "QUIT",
    "PING",
    "PONG",
    "CHATHISTORY",
    "BATCH",
];

/// One line for `raw`: a command and its parameters, nothing before them.
pub fn raw(line: &str) -> Result<Message, Invalid> {
    let line = line.trim_start();
    if line.len() > RAW_MAX {
        return Err(format!("a raw line may be at most {RAW_MAX} bytes"));
    }
    if line.starts_with(['@', ':']) {
        return Err("a raw line starts with its command (no tags or prefix)".into());
    }
    let line = clean("a raw line", line)?;
    let msg = Message::parse(line).map_err(|e| format!("not an IRC line: {e}"))?;
    if NOT_RAW.contains(&msg.command.as_str()) {
        return Err(format!(
            "{} is the bouncer's business and cannot be sent raw",
            msg.command
        ));
    }
    Ok(msg)
}

/// Checks a nick for `query`.
pub fn query_target(nick: &str) -> Result<(), Invalid> {
    name("nick", nick).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_keep_the_id() {
        assert!(parse("{not json").unwrap_err().0.is_none());
        let (id, msg) = parse(r#"{"type":"fly","id":7}"#).unwrap_err();
        assert_eq!(id, Some(Value::from(7)));
        assert!(msg.contains("invalid command"), "{msg}");
        assert!(parse("[1]").is_err());
        assert!(matches!(
            parse(r#"{"type":"ping","id":"a"}"#).unwrap(),
            Command::Ping { id: Some(_) }
        ));
    }

    #[test]
    fn no_line_injection() {
        assert!(join("#a\r\nQUIT", None).is_err());
        assert!(join("#a b", None).is_err());
        assert!(nick("x\ny").is_err());
        assert!(topic("#a", "t\r\nQUIT :x").is_err());
        let lines = send_lines("#a", "one\r\ntwo\n\nthree", false, false).unwrap();
        let got: Vec<_> = lines.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            got,
            ["PRIVMSG #a one", "PRIVMSG #a two", "PRIVMSG #a three"]
        );
        let me = send_lines("#a", "waves", true, false).unwrap();
        assert_eq!(me[0].param(1).unwrap(), b"\x01ACTION waves\x01");
        assert!(send_lines("#a", "\n", false, false).is_err());
        // Found by the `ws_command` fuzz target: a line of only NULs was sent as an
        // empty PRIVMSG.
        let lines = send_lines("#a", "one\n\0\0\ntwo", false, false).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(send_lines("#a", "\0", false, false).is_err());
        assert!(send_lines("#a\r", "x", false, false).is_err());
        // Found by the `ws_command` fuzz target: `PRIVMSG :#a one` is one parameter.
        assert!(send_lines(":#a", "one", false, false).is_err());
        assert!(join(":#a", None).is_err());
        assert!(join("#a", Some(":k")).is_err());
        assert!(nick(":x").is_err());
    }

    fn lines(frame: Value) -> Result<Vec<String>, Invalid> {
        let mut frame = frame;
        frame["network"] = "n".into();
        let cmd = parse(&frame.to_string()).unwrap();
        irc_lines(&cmd).map(|l| l.iter().map(|m| m.to_string()).collect())
    }

    #[test]
    fn everyday_commands() {
        use serde_json::json;
        let ok = |frame: Value| lines(frame).unwrap();
        assert_eq!(ok(json!({"type": "whois", "nick": "bob"})), ["WHOIS bob"]);
        assert_eq!(
            ok(json!({"type": "mode", "target": "#c", "modes": ["+ob", "bob", "eve!*@*"]})),
            ["MODE #c +ob bob eve!*@*"]
        );
        assert_eq!(ok(json!({"type": "mode", "target": "#c"})), ["MODE #c"]);
        assert_eq!(
            ok(json!({"type": "kick", "channel": "#c", "nick": "bob", "reason": "be nice"})),
            ["KICK #c bob :be nice"]
        );
        assert_eq!(
            ok(json!({"type": "invite", "nick": "bob", "channel": "#c"})),
            ["INVITE bob #c"]
        );
        assert_eq!(
            ok(json!({"type": "away", "text": "lunch, back soon"})),
            ["AWAY :lunch, back soon"]
        );
        assert_eq!(ok(json!({"type": "away"})), ["AWAY"]);
        assert_eq!(
            ok(json!({"type": "detach", "network": "n", "channel": "#ferry"})),
            ["PART #ferry detach"]
        );
        assert_eq!(
            ok(json!({"type": "attach", "network": "n", "channel": "#ferry"})),
            ["JOIN #ferry"]
        );
        assert_eq!(ok(json!({"type": "list"})), ["LIST"]);
        assert_eq!(ok(json!({"type": "raw", "line": "motd"})), ["MOTD"]);
        assert_eq!(
            ok(json!({"type": "raw", "line": "PRIVMSG #c :hi there"})),
            ["PRIVMSG #c :hi there"]
        );
        // Nothing can smuggle a second line or take over the connection.
        for bad in [
            json!({"type": "raw", "line": "MOTD\r\nQUIT"}),
            json!({"type": "raw", "line": "QUIT :bye"}),
            json!({"type": "raw", "line": "cap ls"}),
            json!({"type": "raw", "line": ":me PRIVMSG #c x"}),
            json!({"type": "raw", "line": ""}),
            json!({"type": "mode", "target": "#c", "modes": ["o", "bob"]}),
            json!({"type": "mode", "target": "#c", "modes": ["+b", "a b"]}),
            json!({"type": "kick", "channel": "#c", "nick": "bob", "reason": "x\nQUIT"}),
            json!({"type": "whois", "nick": "bob\r\nQUIT"}),
        ] {
            assert!(lines(bad.clone()).is_err(), "{bad}");
        }
    }
}
