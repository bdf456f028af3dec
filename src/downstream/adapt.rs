//! Adapting a line from the network (live or from the store) to what one
//! client negotiated: tags, optional commands and reply formats.

use chrono::{DateTime, Utc};

use super::caps::Caps;
use crate::irc::{time, Casemapping, ISupport, Message};
use crate::store::Seq;

/// What adaptation needs to know about the client besides its caps.
pub struct Client<'a> {
    pub caps: &'a Caps,
    /// Our nick on the network: invites for us are always delivered.
    pub nick: &'a [u8],
    pub isupport: &'a ISupport,
}

/// The line as this client should see it, or `None` when it must not see it.
/// `seq` becomes the `msgid` tag and `time` the `time` tag, if the client
/// takes them.
pub fn adapt(msg: &Message, seq: Option<Seq>, t: DateTime<Utc>, c: &Client<'_>) -> Option<Message> {
    let caps = c.caps;
    let needs = |cap| caps.has(cap);
    match msg.command.as_str() {
        "AWAY" if !needs("away-notify") => return None,
        "ACCOUNT" if !needs("account-notify") => return None,
        "CHGHOST" if !needs("chghost") => return None,
        "SETNAME" if !needs("setname") => return None,
        "TAGMSG" if !needs("message-tags") => return None,
        "BATCH" if !needs("batch") => return None,
        "INVITE" if !needs("invite-notify") => {
            let for_us = msg
                .param(0)
                .is_some_and(|n| Casemapping::eq(c.isupport.casemapping, n, c.nick));
            if !for_us {
                return None;
            }
        }
        _ => {}
    }
    let mut out = msg.clone();
    if out.command == "JOIN" && out.params.len() > 1 && !needs("extended-join") {
        out.params.truncate(1);
    }
    if out.command == "353" {
        if let Some(names) = out.params.last_mut() {
            *names = reduce_names(
                names,
                c.isupport,
                needs("multi-prefix"),
                needs("userhost-in-names"),
            )
            .into();
        }
    }
    adapt_tags(&mut out, seq, t, caps);
    Some(out)
}

/// Applies the tag rules: without `message-tags` only the tags of other
/// negotiated caps survive; `time` and `msgid` are always ours.
pub fn adapt_tags(out: &mut Message, seq: Option<Seq>, t: DateTime<Utc>, caps: &Caps) {
    let tags_ok = caps.has("message-tags");
    out.tags.retain(|tag| match tag.key.as_str() {
        "time" | "msgid" => false,
        "account" => caps.has("account-tag"),
        "batch" => caps.has("batch"),
        _ => tags_ok,
    });
    if caps.has("server-time") {
        out.set_tag("time", Some(&time::format(t)));
    }
    if let (true, Some(seq)) = (tags_ok, seq) {
        out.set_tag("msgid", Some(&seq.to_string()));
    }
}

/// Reduces a NAMES list: the highest prefix only without `multi-prefix`,
/// bare nicks without `userhost-in-names`.
pub fn reduce_names(names: &[u8], is: &ISupport, multi: bool, userhost: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(names.len());
    for name in names.split(|&b| b == b' ').filter(|n| !n.is_empty()) {
        let (prefixes, mut nick) = is.split_prefixes(name);
        if !userhost {
            if let Some(i) = nick.iter().position(|&b| b == b'!') {
                nick = &nick[..i];
            }
        }
        if !out.is_empty() {
            out.push(b' ');
        }
        if multi {
            out.extend_from_slice(prefixes);
        } else if let Some(p) = highest_prefix(prefixes, is) {
            out.push(p);
        }
        out.extend_from_slice(nick);
    }
    out
}

/// The highest-ranking symbol among `prefixes`, by ISUPPORT `PREFIX` order.
pub fn highest_prefix(prefixes: &[u8], is: &ISupport) -> Option<u8> {
    is.prefix
        .iter()
        .map(|(_, s)| *s)
        .find(|s| prefixes.contains(s))
        .or_else(|| prefixes.first().copied())
}

/// Commands replayed from the store (backlog and `CHATHISTORY`). Stored
/// JOIN/PART/… would rewrite the client's channel state after the burst.
pub fn replayable(command: &str) -> bool {
    matches!(command, "PRIVMSG" | "NOTICE" | "TAGMSG")
}

/// A stored line as this client should see it: re-parsed from its raw bytes
/// and adapted like a live line, with its stored time and id.
pub fn from_store(m: &crate::store::StoredMessage, c: &Client<'_>) -> Option<Message> {
    let mut raw = m.raw.clone();
    while raw.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        raw.truncate(raw.len() - 1);
    }
    let msg = Message::parse(raw).ok()?;
    if !replayable(&msg.command) {
        return None;
    }
    adapt(&msg, Some(m.seq), m.time, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn run(line: &str, seq: Option<Seq>, caps: &[&str]) -> Option<String> {
        let caps = Caps::default().with(caps);
        let is = ISupport::default();
        let c = Client {
            caps: &caps,
            nick: b"Me",
            isupport: &is,
        };
        let t = time::parse("2024-05-06T07:08:09.010Z").unwrap();
        adapt(&parse(line), seq, t, &c).map(|m| m.to_string())
    }

    #[test]
    fn tag_table() {
        let line = "@time=2000-01-01T00:00:00.000Z;msgid=up;account=bob;+draft/react=x :bob!b@h PRIVMSG #c :hi";
        let cases: &[(&[&str], Option<Seq>, &str)] = &[
            (&[], Some(7), ":bob!b@h PRIVMSG #c hi"),
            (&["server-time"], Some(7), "@time=2024-05-06T07:08:09.010Z :bob!b@h PRIVMSG #c hi"),
            (&["account-tag"], None, "@account=bob :bob!b@h PRIVMSG #c hi"),
            (
                &["message-tags"],
                Some(7),
                "@+draft/react=x;msgid=7 :bob!b@h PRIVMSG #c hi",
            ),
            (&["message-tags"], None, "@+draft/react=x :bob!b@h PRIVMSG #c hi"),
            (
                &["message-tags", "server-time", "account-tag"],
                Some(42),
                "@account=bob;+draft/react=x;time=2024-05-06T07:08:09.010Z;msgid=42 :bob!b@h PRIVMSG #c hi",
            ),
        ];
        for (caps, seq, want) in cases {
            assert_eq!(
                run(line, *seq, caps).as_deref(),
                Some(*want),
                "caps {caps:?}"
            );
        }
    }

    #[test]
    fn optional_commands() {
        assert_eq!(run(":a!b@c AWAY :gone", None, &[]), None);
        assert!(run(":a!b@c AWAY :gone", None, &["away-notify"]).is_some());
        assert_eq!(run(":a!b@c ACCOUNT acc", None, &[]), None);
        assert_eq!(run(":a!b@c CHGHOST u h", None, &[]), None);
        assert_eq!(run(":a!b@c SETNAME :x", None, &[]), None);
        assert_eq!(run("@+typing=active :a!b@c TAGMSG #c", None, &[]), None);
        assert_eq!(run(":a!b@c INVITE other #c", None, &[]), None);
        assert!(run(":a!b@c INVITE me #c", None, &[]).is_some());
        assert!(run(":a!b@c INVITE other #c", None, &["invite-notify"]).is_some());
        assert_eq!(
            run(":a!b@c JOIN #c acc :Real Name", None, &[]).unwrap(),
            ":a!b@c JOIN #c"
        );
        assert_eq!(
            run(":a!b@c JOIN #c acc :Real Name", None, &["extended-join"]).unwrap(),
            ":a!b@c JOIN #c acc :Real Name"
        );
    }

    #[test]
    fn names_reduction() {
        let l = ":srv 353 me = #c :@+alice!a@h +bob!b@h carol!c@h";
        assert_eq!(
            run(l, None, &[]).unwrap(),
            ":srv 353 me = #c :@alice +bob carol"
        );
        assert_eq!(
            run(l, None, &["multi-prefix", "userhost-in-names"]).unwrap(),
            l
        );
        let is = ISupport::default();
        assert_eq!(reduce_names(b"+@x", &is, false, false), b"@x");
    }
}
