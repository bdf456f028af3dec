//! What a client sees right after login: welcome numerics, ISUPPORT, our
//! nick, and the channels we are in.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::adapt::highest_prefix;
use super::caps::Caps;
use crate::irc::{numeric, ISupport, Message};
use crate::user::{ChannelView, ConnState, NetworkView};

/// Upstream ISUPPORT tokens we do not pass on (we serve these ourselves or
/// cannot honour them).
const HIDDEN_TOKENS: &[&str] = &[
    "CHATHISTORY",
    "MSGREFTYPES",
    "BOT",
    "UTF8ONLY",
    "ACCOUNTEXTBAN",
];

/// ISUPPORT tokens Ferry adds.
const OWN_TOKENS: &[(&str, &str)] = &[("CHATHISTORY", "1000"), ("MSGREFTYPES", "msgid,timestamp")];

/// The full burst, in order. `client_nick` is the nick the client registered
/// with; when it differs from ours upstream the client is told to follow.
pub fn burst(server: &str, view: &NetworkView, client_nick: &[u8], caps: &Caps) -> Vec<Message> {
    let cnick = String::from_utf8_lossy(client_nick).into_owned();
    let num = |code: &str, params: Vec<Bytes>| {
        let mut p = vec![Bytes::from(cnick.clone())];
        p.extend(params);
        Message::new(code, p).with_prefix(server.to_owned())
    };
    let s = |x: &str| Bytes::from(x.to_owned());
    let mut out = vec![
        num(
            numeric::RPL_WELCOME,
            vec![s(&format!(
                "Welcome to Ferry, {cnick}; you are on network {}",
                view.network_name
            ))],
        ),
        num(
            numeric::RPL_YOURHOST,
            vec![s(&format!(
                "Your host is {server}, running version ferry-{}",
                env!("CARGO_PKG_VERSION")
            ))],
        ),
        num(
            numeric::RPL_CREATED,
            vec![s("This server was created some time ago")],
        ),
        num(
            numeric::RPL_MYINFO,
            vec![
                s(server),
                s(&format!("ferry-{}", env!("CARGO_PKG_VERSION"))),
                s("iorsw"),
                Bytes::from(view.isupport.chanmodes.concat()),
            ],
        ),
    ];
    let tokens: Vec<String> = client_tokens(&view.isupport, &view.network_name)
        .into_iter()
        .map(|(k, v)| token(k, v))
        .collect();
    out.extend(isupport_lines(server, &cnick, &tokens));
    // The network's MOTD as the server sent it at registration; 422 only when
    // the server had none (or we never connected).
    match view.motd.as_deref() {
        Some(motd) => {
            out.push(num(
                numeric::RPL_MOTDSTART,
                vec![s(&format!("- {} Message of the Day -", view.network_name))],
            ));
            for line in motd {
                out.push(num(numeric::RPL_MOTD, vec![line.clone()]));
            }
            out.push(num(
                numeric::RPL_ENDOFMOTD,
                vec![s("End of /MOTD command.")],
            ));
        }
        None => out.push(num(numeric::ERR_NOMOTD, vec![s("MOTD File is missing")])),
    }
    let nick = String::from_utf8_lossy(&view.nick).into_owned();
    if view.nick != client_nick {
        out.push(Message::new("NICK", [nick.clone()]).with_prefix(cnick.clone()));
    }
    if !view.user_modes.is_empty() {
        let mut modes = view.user_modes.clone();
        if modes.first() != Some(&b'+') {
            modes.insert(0, b'+');
        }
        out.push(
            Message::new("MODE", [Bytes::from(nick.clone()), Bytes::from(modes)])
                .with_prefix(nick.clone()),
        );
    }
    // Our JOINs carry the full `nick!user@host` once the server told us who we are.
    let own_prefix = match &view.userhost {
        Some(uh) => format!("{nick}!{}", String::from_utf8_lossy(uh)),
        None => nick.clone(),
    };
    // A detached channel is left out: the client is not told it is in it.
    for ch in view.channels.iter().filter(|c| !c.detached) {
        out.extend(channel_lines(
            server,
            &nick,
            &own_prefix,
            ch,
            &view.isupport,
            caps,
        ));
    }
    match &view.state {
        ConnState::Connected => {}
        state => {
            let why = state.describe();
            out.push(
                Message::new(
                    "NOTICE",
                    [
                        nick.clone(),
                        format!("Network {} is not connected: {why}", view.network_name),
                    ],
                )
                .with_prefix(server.to_owned()),
            );
        }
    }
    out
}

/// A channel as a client learns it is in it: our `JOIN` (`own_prefix` is
/// `nick!user@host`), its topic and its names.
pub fn channel_lines(
    server: &str,
    nick: &str,
    own_prefix: &str,
    ch: &ChannelView,
    isupport: &ISupport,
    caps: &Caps,
) -> Vec<Message> {
    let s = |x: &str| Bytes::from(x.to_owned());
    let onum = |code: &str, params: Vec<Bytes>| {
        let mut p = vec![Bytes::from(nick.to_owned())];
        p.extend(params);
        Message::new(code, p).with_prefix(server.to_owned())
    };
    let mut out = Vec::new();
    let name = Bytes::from(ch.name.clone());
    let mut join = vec![name.clone()];
    if caps.has("extended-join") {
        join.extend([s("*"), s(nick)]);
    }
    out.push(Message::new("JOIN", join).with_prefix(own_prefix.to_owned()));
    if let Some(topic) = &ch.topic {
        out.push(onum(
            numeric::RPL_TOPIC,
            vec![name.clone(), Bytes::from(topic.clone())],
        ));
        if let Some((who, at)) = &ch.topic_meta {
            out.push(onum(
                numeric::RPL_TOPICWHOTIME,
                vec![name.clone(), Bytes::from(who.clone()), s(&at.to_string())],
            ));
        }
    }
    let names: Vec<Vec<u8>> = ch
        .members
        .iter()
        .map(|(prefixes, member)| {
            let mut n = Vec::with_capacity(member.len() + 2);
            if caps.has("multi-prefix") {
                n.extend_from_slice(prefixes);
            } else if let Some(p) = highest_prefix(prefixes, isupport) {
                n.push(p);
            }
            n.extend_from_slice(member);
            n
        })
        .collect();
    out.extend(names_replies(server, nick, &ch.name, &names));
    out.push(onum(
        numeric::RPL_ENDOFNAMES,
        vec![name, s("End of /NAMES list")],
    ));
    out
}

/// The tokens of our `005`: the upstream's minus hidden ones, plus ours and
/// defaults for the essentials.
fn client_tokens(isupport: &ISupport, network_name: &str) -> BTreeMap<String, Option<String>> {
    let mut tokens = isupport.tokens.clone();
    tokens.retain(|k, _| !HIDDEN_TOKENS.contains(&k.as_str()));
    for (k, v) in OWN_TOKENS {
        tokens.insert((*k).to_owned(), Some((*v).to_owned()));
    }
    tokens
        .entry("NETWORK".into())
        .or_insert_with(|| Some(network_name.to_owned()));
    tokens
        .entry("CASEMAPPING".into())
        .or_insert_with(|| Some("rfc1459".into()));
    tokens
}

/// A token as a `005` parameter: `KEY=value`, or `KEY` when it has no value.
fn token(k: String, v: Option<String>) -> String {
    match v {
        Some(v) if !v.is_empty() => format!("{k}={v}"),
        _ => k,
    }
}

/// `005` lines for `tokens`, 13 a line.
fn isupport_lines(server: &str, nick: &str, tokens: &[String]) -> Vec<Message> {
    tokens
        .chunks(13)
        .map(|chunk| {
            let mut params = vec![Bytes::from(nick.to_owned())];
            params.extend(chunk.iter().map(|t| Bytes::from(t.clone())));
            params.push(Bytes::from_static(b"are supported by this server"));
            Message::new(numeric::RPL_ISUPPORT, params).with_prefix(server.to_owned())
        })
        .collect()
}

/// What an attached IRC client is told when the network's ISUPPORT changed (a new
/// registration after the server's configuration changed, or a later `005`): `005`
/// lines with the tokens it sees that differ from `old`'s, new or changed ones with
/// their value and removed ones as `-KEY` (as a server announces a change). Empty
/// when nothing the client sees changed.
pub fn isupport_changes(
    server: &str,
    nick: &str,
    network_name: &str,
    old: &ISupport,
    new: &ISupport,
) -> Vec<Message> {
    let was = client_tokens(old, network_name);
    let now = client_tokens(new, network_name);
    let mut changed: Vec<String> = was
        .keys()
        .filter(|k| !now.contains_key(*k))
        .map(|k| format!("-{k}"))
        .collect();
    changed.extend(
        now.into_iter()
            .filter(|(k, v)| was.get(k) != Some(v))
            .map(|(k, v)| token(k, v)),
    );
    isupport_lines(server, nick, &changed)
}

/// `353` lines for a channel, each within 512 bytes including CRLF.
pub fn names_replies(server: &str, nick: &str, channel: &[u8], names: &[Vec<u8>]) -> Vec<Message> {
    let make = |list: Vec<u8>| {
        Message::new(
            numeric::RPL_NAMREPLY,
            [
                Bytes::from(nick.to_owned()),
                Bytes::from_static(b"="),
                Bytes::copy_from_slice(channel),
                Bytes::from(list),
            ],
        )
        .with_prefix(server.to_owned())
    };
    // ":server 353 nick = #chan :" + names + "\r\n"
    let overhead = 1 + server.len() + 5 + nick.len() + 3 + channel.len() + 2 + 2;
    let room = 512usize.saturating_sub(overhead).max(64);
    let mut out = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    for name in names {
        if !line.is_empty() && line.len() + 1 + name.len() > room {
            out.push(make(std::mem::take(&mut line)));
        }
        if !line.is_empty() {
            line.push(b' ');
        }
        line.extend_from_slice(name);
    }
    if !line.is_empty() {
        out.push(make(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irc::ISupport;
    use crate::user::ChannelView;
    use std::sync::Arc;

    pub fn view() -> NetworkView {
        let mut isupport = ISupport::default();
        isupport.apply([
            &b"CHANTYPES=#"[..],
            b"PREFIX=(ov)@+",
            b"CHATHISTORY=50",
            b"NETWORK=Test",
        ]);
        NetworkView {
            network_id: 1,
            network_name: "test".into(),
            state: ConnState::Connected,
            nick: b"alice".to_vec(),
            isupport,
            upstream_caps: Default::default(),
            user_modes: Vec::new(),
            userhost: None,
            motd: None,
            away: None,
            channels: vec![ChannelView {
                name: b"#ferry".to_vec(),
                topic: Some(b"Welcome aboard".to_vec()),
                topic_meta: Some((b"bob".to_vec(), 1700000000)),
                members: vec![
                    (b"@+".to_vec(), b"alice".to_vec()),
                    (b"".to_vec(), b"bob".to_vec()),
                ],
                detached: false,
            }],
        }
    }

    #[test]
    fn isupport_changes_name_what_changed() {
        let old = view().isupport;
        let mut new = old.clone();
        new.apply([&b"NETWORK=Other"[..], b"NICKLEN=30", b"-CHANTYPES"]);
        let out: Vec<String> = isupport_changes("ferry", "al", "test", &old, &new)
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(
            out,
            [":ferry 005 al -CHANTYPES NETWORK=Other NICKLEN=30 :are supported by this server"]
        );
        assert!(isupport_changes("ferry", "al", "test", &old, &old.clone()).is_empty());
        // Tokens Ferry serves itself do not change with the upstream's.
        let mut hidden = old.clone();
        hidden.apply([&b"CHATHISTORY=10"[..]]);
        assert!(isupport_changes("ferry", "al", "test", &old, &hidden).is_empty());
    }

    #[test]
    fn renders_burst() {
        let out: Vec<String> = burst("ferry", &view(), b"al", &Caps::default())
            .iter()
            .map(|m| m.to_string())
            .collect();
        let text = out.join("\n");
        assert!(out[0].starts_with(":ferry 001 al :Welcome"), "{text}");
        assert_eq!(
            out[4],
            ":ferry 005 al CASEMAPPING=rfc1459 CHANTYPES=# CHATHISTORY=1000 MSGREFTYPES=msgid,timestamp NETWORK=Test PREFIX=(ov)@+ :are supported by this server"
        );
        let tail = &out[5..];
        assert_eq!(
            tail,
            [
                ":ferry 422 al :MOTD File is missing",
                ":al NICK alice",
                ":alice JOIN #ferry",
                ":ferry 332 alice #ferry :Welcome aboard",
                ":ferry 333 alice #ferry bob 1700000000",
                ":ferry 353 alice = #ferry :@alice bob",
                ":ferry 366 alice #ferry :End of /NAMES list",
            ]
        );
        let multi = burst(
            "ferry",
            &view(),
            b"alice",
            &Caps::default().with(&["multi-prefix"]),
        );
        assert!(multi
            .iter()
            .any(|m| m.to_string() == ":ferry 353 alice = #ferry :@+alice bob"));
        assert!(!multi.iter().any(|m| m.command == "NICK"));
    }

    /// Issue 18 findings 2 and 3: the user's real modes, the network's MOTD, and
    /// JOINs with our full prefix.
    #[test]
    fn burst_has_real_modes_motd_and_full_join_prefix() {
        let mut v = view();
        v.user_modes = b"i".to_vec();
        v.userhost = Some(b"~alice@example.org".to_vec());
        v.motd = Some(Arc::from([
            Bytes::from_static(b"- hello"),
            Bytes::from_static(b"- world"),
        ]));
        let out: Vec<String> = burst("ferry", &v, b"alice", &Caps::default())
            .iter()
            .map(|m| m.to_string())
            .collect();
        let tail = &out[5..];
        assert_eq!(
            &tail[..6],
            [
                ":ferry 375 alice :- test Message of the Day -",
                ":ferry 372 alice :- hello",
                ":ferry 372 alice :- world",
                ":ferry 376 alice :End of /MOTD command.",
                ":alice MODE alice +i",
                ":alice!~alice@example.org JOIN #ferry",
            ]
        );
    }

    #[test]
    fn disconnected_notice() {
        let mut v = view();
        v.state = ConnState::Disconnected {
            reason: "timeout".into(),
            retrying: true,
            retry_at: None,
        };
        let out = burst("ferry", &v, b"alice", &Caps::default());
        assert!(out
            .last()
            .unwrap()
            .to_string()
            .contains("not connected: backing off (timeout)"));
    }

    #[test]
    fn names_are_split_to_fit() {
        let names: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("@nick{i:04}").into_bytes())
            .collect();
        let out = names_replies("ferry", "alice", b"#chan", &names);
        assert!(out.len() > 1);
        let mut seen = Vec::new();
        for m in &out {
            assert!(m.to_bytes().len() + 2 <= 512);
            seen.extend(
                m.param(3)
                    .unwrap()
                    .split(|&b| b == b' ')
                    .map(<[u8]>::to_vec),
            );
        }
        assert_eq!(seen, names);
    }
}
