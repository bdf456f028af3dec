//! Client capabilities: what Ferry offers and the `CAP` command, before and
//! after registration.

use std::collections::BTreeSet;

use super::error::ProtoError;
use crate::irc::Message;

/// Capabilities offered to clients, with their `CAP LS 302` values.
pub const OFFERED: &[(&str, Option<&str>)] = &[
    ("account-notify", None),
    ("account-tag", None),
    ("away-notify", None),
    ("batch", None),
    ("cap-notify", None),
    ("chghost", None),
    ("draft/chathistory", None),
    // Read markers shared with the web client (`MARKREAD`).
    ("draft/read-marker", None),
    ("echo-message", None),
    ("extended-join", None),
    ("invite-notify", None),
    ("message-tags", None),
    ("multi-prefix", None),
    ("sasl", Some("PLAIN")),
    ("server-time", None),
    ("setname", None),
    // One connection for all of a user's networks (`BOUNCER`, `bouncer`).
    ("soju.im/bouncer-networks", None),
    ("soju.im/bouncer-networks-notify", None),
    // Web Push for IRC clients (`webpush`); refused with FAIL when push is off.
    ("soju.im/webpush", None),
    ("userhost-in-names", None),
];

/// Accepted on `CAP REQ` but never listed: for Ferry's own use between nodes.
///
/// `ferry.invalid/proxy` marks a connection one Ferry node opened to another to
/// proxy a client: when the user moves, such a connection is closed with
/// [`crate::user::MOVING`] so that the proxying node follows the move itself, rather
/// than being followed (which would chain the client through the old owner). A
/// client asking for it by hand only gets the close it would have got anyway. The
/// `.invalid` domain (RFC 2606) cannot clash with any vendor's capability.
pub const HIDDEN: &[&str] = &[PROXY];

/// See [`HIDDEN`].
pub const PROXY: &str = "ferry.invalid/proxy";
/// The capability of `BOUNCER` and of connections bound to no network.
pub const BOUNCER_NETWORKS: &str = "soju.im/bouncer-networks";

/// The capabilities one client has enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    enabled: BTreeSet<&'static str>,
    /// Set by `CAP LS 302` (which also implies `cap-notify`).
    pub version_302: bool,
}

impl Caps {
    /// The capabilities the client enabled, by name.
    pub fn enabled(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.enabled.iter().copied()
    }

    pub fn has(&self, cap: &str) -> bool {
        self.enabled.contains(cap)
    }

    /// The capabilities named (those Ferry offers), as a parked client had them.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>, version_302: bool) -> Caps {
        let mut caps = Caps {
            version_302,
            ..Caps::default()
        };
        for c in names {
            if let Some((name, _)) = OFFERED.iter().find(|(n, _)| *n == c) {
                caps.enabled.insert(name);
            }
        }
        caps
    }

    /// Enables capabilities by name.
    #[cfg(test)]
    pub fn with(mut self, caps: &[&str]) -> Caps {
        for c in caps {
            if let Some((name, _)) = OFFERED.iter().find(|(n, _)| n == c) {
                self.enabled.insert(name);
            }
        }
        self
    }

    fn list(&self) -> String {
        self.enabled.iter().copied().collect::<Vec<_>>().join(" ")
    }
}

/// What a `CAP` command did to registration.
#[derive(Debug, PartialEq, Eq)]
pub enum CapEffect {
    None,
    /// `LS` or `REQ`: registration waits for `CAP END`.
    Started,
    /// `END`.
    Ended,
}

/// Handles one `CAP` command, returning the replies and its effect.
pub fn handle(
    msg: &Message,
    caps: &mut Caps,
    server: &str,
    nick: &str,
) -> (Vec<Message>, CapEffect) {
    let reply = |params: Vec<String>| {
        let mut p = vec![nick.to_owned()];
        p.extend(params);
        Message::new("CAP", p).with_prefix(server.to_owned())
    };
    let Some(sub) = msg.param_str(0) else {
        return (
            vec![ProtoError::NeedMoreParams("CAP".into()).to_message(server, nick)],
            CapEffect::None,
        );
    };
    let sub = sub.to_ascii_uppercase();
    match sub.as_str() {
        "LS" => {
            let v302 = msg
                .param_str(1)
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|v| v >= 302);
            if v302 {
                caps.version_302 = true;
                caps.enabled.insert("cap-notify");
            }
            let list = OFFERED
                .iter()
                .map(|(n, v)| match (v, v302) {
                    (Some(v), true) => format!("{n}={v}"),
                    _ => (*n).to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ");
            (vec![reply(vec!["LS".into(), list])], CapEffect::Started)
        }
        "LIST" => (
            vec![reply(vec!["LIST".into(), caps.list()])],
            CapEffect::None,
        ),
        "REQ" => {
            let req = msg.param_str(1).unwrap_or_default().into_owned();
            let mut changes = Vec::new();
            let mut ok = true;
            for token in req.split(' ').filter(|t| !t.is_empty()) {
                let (remove, name) = match token.strip_prefix('-') {
                    Some(n) => (true, n),
                    None => (false, token),
                };
                let known = OFFERED.iter().map(|(n, _)| n).chain(HIDDEN);
                match known.into_iter().find(|n| **n == name) {
                    Some(n) => changes.push((remove, *n)),
                    None => ok = false,
                }
            }
            if !ok {
                return (vec![reply(vec!["NAK".into(), req])], CapEffect::Started);
            }
            for (remove, name) in changes {
                if remove {
                    caps.enabled.remove(name);
                } else {
                    caps.enabled.insert(name);
                }
            }
            (vec![reply(vec!["ACK".into(), req])], CapEffect::Started)
        }
        "END" => (Vec::new(), CapEffect::Ended),
        other => {
            // Echoed as a middle parameter: only if it is one word.
            let shown = if crate::irc::is_word(other.as_bytes()) {
                other
            } else {
                "*"
            };
            (
                vec![ProtoError::InvalidCapCmd(shown.to_owned()).to_message(server, nick)],
                CapEffect::None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn cap(line: &str, caps: &mut Caps) -> (Vec<String>, CapEffect) {
        let m = Message::parse(Bytes::copy_from_slice(line.as_bytes())).unwrap();
        let (out, e) = handle(&m, caps, "ferry", "*");
        (out.iter().map(|m| m.to_string()).collect(), e)
    }

    #[test]
    fn ls_req_list() {
        let mut caps = Caps::default();
        let (out, e) = cap("CAP LS 302", &mut caps);
        assert_eq!(e, CapEffect::Started);
        assert!(out[0].contains("sasl=PLAIN") && out[0].contains("draft/chathistory"));
        let (out, _) = cap("CAP REQ :server-time batch", &mut caps);
        assert_eq!(out, [":ferry CAP * ACK :server-time batch"]);
        let (out, _) = cap("CAP REQ :server-time bogus", &mut caps);
        assert_eq!(out, [":ferry CAP * NAK :server-time bogus"]);
        let (out, _) = cap("CAP REQ ferry.invalid/proxy", &mut caps);
        assert_eq!(out, [":ferry CAP * ACK ferry.invalid/proxy"]);
        assert!(caps.has(PROXY));
        let (out, _) = cap("CAP REQ -ferry.invalid/proxy", &mut caps);
        assert_eq!(out, [":ferry CAP * ACK -ferry.invalid/proxy"]);
        let (out, _) = cap("CAP LS 302", &mut Caps::default());
        assert!(!out[0].contains("ferry.invalid"), "never listed: {out:?}");
        let (out, _) = cap("CAP REQ -batch", &mut caps);
        assert_eq!(out, [":ferry CAP * ACK -batch"]);
        let (out, _) = cap("CAP LIST", &mut caps);
        assert_eq!(out, [":ferry CAP * LIST :cap-notify server-time"]);
        assert_eq!(cap("CAP END", &mut caps).1, CapEffect::Ended);
        // Found by the `registration` fuzz target: an unknown subcommand with a
        // space was echoed as a middle parameter, so the reply had one more.
        let (out, _) = cap("CAP :RE Q", &mut caps);
        assert_eq!(out, [":ferry 410 * * :Invalid CAP command"]);
        let (out, _) = cap("CAP bogus", &mut caps);
        assert_eq!(out, [":ferry 410 * BOGUS :Invalid CAP command"]);
        let (out, _) = cap("CAP LS", &mut Caps::default());
        assert!(out[0].contains(" sasl ") && !out[0].contains("sasl="));
    }
}
