//! `BouncerServ`: the service user an attached IRC client talks to, with soju's
//! commands so its users feel at home (`/msg BouncerServ help`). A `PRIVMSG`,
//! `NOTICE` or `TAGMSG` addressed to it is answered here and never reaches the actor
//! nor the IRC server; answers are NOTICEs from `BouncerServ!BouncerServ@<server>`.
//!
//! This file only parses commands and words answers: every change goes through the
//! shared operations of the `account` module (the user API's, with the same
//! validation, allow list, per-user cap and typed errors, applied to the running
//! session at once) and, for admins, of the `admin` module.
//!
//! Arguments are split on spaces; `"double quotes"` keep spaces together and `\`
//! escapes the next character, as in soju.

mod admin;
mod args;
mod channel;
mod network;
mod user;

use std::net::IpAddr;

use bytes::Bytes;

use args::{no_words, one_word, split, Args};
use channel::{channel_status, channel_update};
use network::{network_create, network_status, network_update, target_network, NETWORK_FLAGS};
use user::user_update;

use crate::account::{self, AccountError, NetworkChange, SaslPlain};
use crate::irc::Message;
use crate::services::Services;
use crate::store::{NetworkId, UserId};

/// The service's nick.
pub const NICK: &str = "BouncerServ";

/// Whether a client line is addressed to BouncerServ (and so stays in Ferry).
pub fn addressed(msg: &Message) -> bool {
    matches!(msg.command.as_str(), "PRIVMSG" | "NOTICE" | "TAGMSG")
        && msg
            .param(0)
            .is_some_and(|t| t.eq_ignore_ascii_case(NICK.as_bytes()))
}

/// Who asks: the attached client's user, network and address.
pub struct Caller<'a> {
    pub services: &'a Services,
    pub user_id: UserId,
    /// The network the client is attached to: the default of `-network`.
    pub network: NetworkId,
    /// The client's address, against which a password check is counted.
    pub peer: IpAddr,
}

/// The reply lines (NOTICEs to `nick`) for a line addressed to BouncerServ; none for
/// a NOTICE or TAGMSG, which are never answered.
pub async fn handle(caller: &Caller<'_>, msg: &Message, server: &str, nick: &str) -> Vec<Message> {
    if msg.command.as_str() != "PRIVMSG" {
        return Vec::new();
    }
    let text = msg
        .param(1)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_default();
    let lines = match run(caller, &text).await {
        Ok(lines) => lines,
        Err(e) => vec![format!("error: {e}")],
    };
    let prefix = format!("{NICK}!{NICK}@{server}");
    lines
        .into_iter()
        .map(|l| {
            Message::new("NOTICE", [Bytes::from(nick.to_owned()), Bytes::from(l)])
                .with_prefix(prefix.clone())
        })
        .collect()
}

/// A refusal, worded for an IRC user.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse(msg: impl Into<String>) -> Refusal {
    Refusal(msg.into())
}

impl From<AccountError> for Refusal {
    fn from(e: AccountError) -> Refusal {
        match e {
            // Logged where it happened; the user hears only that it failed.
            AccountError::Store(_) => refuse("the server could not do that now; try again"),
            // The account messages name fields plainly (`addr: …`): here they are flags.
            AccountError::Invalid(m)
                if FLAG_FIELDS.iter().any(|f| m.starts_with(&format!("{f}: "))) =>
            {
                refuse(format!("-{m}"))
            }
            other => refuse(other.to_string()),
        }
    }
}

/// The account fields that BouncerServ's flags name alike.
const FLAG_FIELDS: [&str; 5] = ["name", "addr", "nick", "username", "realname"];

impl From<crate::admin::AdminError> for Refusal {
    fn from(e: crate::admin::AdminError) -> Refusal {
        AccountError::from(e).into()
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Refusal {
        tracing::error!(error = %e, "BouncerServ: the store failed");
        AccountError::Store(e).into()
    }
}

type Answer = Result<Vec<String>, Refusal>;

/// The help texts: a command, its usage and what it does.
const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "help [command]", "show the commands, or one command's usage"),
    (
        "network create",
        "network create -addr ADDR [-name NAME] [-nick NICK] [-username USER] [-realname REALNAME]",
        "add a network and connect to it; ADDR is ircs://host[:port] (TLS, port 6697 by default), \
         irc+insecure://host[:port] (plaintext, 6667) or host[:port] (TLS); NAME defaults to the host",
    ),
    ("network status", "network status", "show your networks and their connections"),
    (
        "network update",
        "network update NAME [-addr ADDR] [-nick NICK] [-username USER] [-realname REALNAME] [-enabled true|false]",
        "change a network; a new nick is asked of the server, anything else reconnects it",
    ),
    ("network delete", "network delete NAME", "disconnect and remove a network and its backlog"),
    (
        "sasl set-plain",
        "sasl set-plain [-network NAME] ACCOUNT PASSWORD",
        "log in to the network with SASL PLAIN (default: this client's network); it reconnects",
    ),
    ("sasl reset", "sasl reset [-network NAME]", "stop using SASL on the network"),
    (
        "channel status",
        "channel status [-network NAME]",
        "show the channels of a network (default: this client's network)",
    ),
    (
        "channel update",
        "channel update CHANNEL [-detached true|false] [-reattach-on message|highlight|none] [-network NAME]",
        "detach a channel (you stay in it and it is logged, but your clients do not get its \
         lines until it is attached again, by a JOIN or by a line -reattach-on matches) or attach it",
    ),
    (
        "user update",
        "user update [-password NEW -current OLD] [-auto-away on|off] [-away-message TEXT]",
        "change your password (your other web sessions end); auto-away: while none of your \
         clients is attached you are marked away on every network with TEXT (\"\": the default)",
    ),
    (
        "user create",
        "user create -username NAME -password PASSWORD [-admin]",
        "admin: add a user",
    ),
    ("user delete", "user delete NAME", "admin: remove a user, their networks and backlog"),
    ("user status", "user status", "admin: list the users"),
    ("server status", "server status", "admin: this node's figures"),
];

fn usage(command: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|(c, _, _)| *c == command)
        .map_or("help", |(_, u, _)| *u)
}

fn help(topic: &[String]) -> Answer {
    let topic = topic.join(" ").to_ascii_lowercase();
    if topic.is_empty() {
        let mut out = vec![format!(
            "{NICK} manages your Ferry account; commands (\"help COMMAND\" for details):"
        )];
        out.extend(COMMANDS.iter().map(|(c, _, what)| {
            let short = what.split(';').next().unwrap_or(what);
            format!("  {c}: {short}")
        }));
        return Ok(out);
    }
    let found: Vec<String> = COMMANDS
        .iter()
        .filter(|(c, _, _)| *c == topic || c.starts_with(&format!("{topic} ")))
        .flat_map(|(_, u, what)| [format!("usage: {u}"), format!("  {what}")])
        .collect();
    if found.is_empty() {
        return Err(refuse(format!("no command {topic:?}; \"help\" lists them")));
    }
    Ok(found)
}

async fn run(caller: &Caller<'_>, text: &str) -> Answer {
    let tokens = split(text)?;
    let word = |i: usize| tokens.get(i).map(|s| s.to_ascii_lowercase());
    let (w0, w1) = (word(0).unwrap_or_default(), word(1).unwrap_or_default());
    if w0 == "help" {
        return help(&tokens[1..]);
    }
    if w0.is_empty() {
        return help(&[]);
    }
    // Read afresh for every command: an admin flag taken away takes effect at once.
    let user = caller
        .services
        .store
        .user(caller.user_id)
        .await?
        .ok_or_else(|| refuse("your account no longer exists"))?;
    let command = format!("{w0} {w1}");
    let rest = tokens.get(2..).unwrap_or_default();
    let args = |allowed: &[&str]| Args::parse(rest, allowed, usage(&command));
    match command.as_str() {
        "network create" => network_create(caller, &user, args(&NETWORK_FLAGS)?).await,
        "network status" => network_status(caller, &user).await,
        "network update" => network_update(caller, &user, args(&NETWORK_FLAGS)?).await,
        "network delete" => {
            let name = one_word(&args(&[])?, &command)?;
            account::remove_network(caller.services, &user, &name).await?;
            Ok(vec![format!("deleted network {name:?}")])
        }
        "sasl set-plain" => {
            let a = args(&["network"])?;
            let [account, password] = &a.words[..] else {
                return Err(refuse(format!("usage: {}", usage(&command))));
            };
            let change = NetworkChange {
                sasl: Some(Some(SaslPlain {
                    account: account.clone(),
                    password: password.clone(),
                })),
                ..NetworkChange::default()
            };
            let net = target_network(caller, &user, &a).await?;
            account::update_network(caller.services, &user, &net.name, &change).await?;
            Ok(vec![format!("SASL PLAIN set for network {:?}", net.name)])
        }
        "sasl reset" => {
            let a = args(&["network"])?;
            no_words(&a, &command)?;
            let net = target_network(caller, &user, &a).await?;
            let change = NetworkChange {
                sasl: Some(None),
                ..NetworkChange::default()
            };
            account::update_network(caller.services, &user, &net.name, &change).await?;
            Ok(vec![format!("SASL removed from network {:?}", net.name)])
        }
        "channel update" => {
            let a = args(&["network", "detached", "reattach-on"])?;
            let chan = one_word(&a, &command)?;
            channel_update(caller, &user, &a, &chan, &command).await
        }
        "channel status" => {
            let a = args(&["network"])?;
            no_words(&a, &command)?;
            channel_status(caller, &user, &a).await
        }
        "user update" => {
            let a = args(&["password", "current", "auto-away", "away-message"])?;
            no_words(&a, &command)?;
            user_update(caller, &user, &a, &command).await
        }
        "user create" | "user delete" | "user status" | "server status" => {
            if !user.is_admin {
                return Err(refuse(format!("{command}: only an admin may do that")));
            }
            admin::run(caller, &user, &command, args).await
        }
        _ => {
            let family = COMMANDS
                .iter()
                .any(|(c, _, _)| c.starts_with(&format!("{w0} ")));
            let hint = if family {
                format!("\"help {w0}\" lists its commands")
            } else {
                "\"help\" lists the commands".to_owned()
            };
            Err(refuse(format!(
                "unknown command {:?}; {hint}",
                tokens.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::args::parse_addr;
    use super::*;

    #[test]
    fn soju_address_forms() {
        assert_eq!(
            parse_addr("ircs://irc.libera.chat").unwrap(),
            ("irc.libera.chat:6697".into(), true)
        );
        assert_eq!(
            parse_addr("ircs://irc.libera.chat:7000/").unwrap(),
            ("irc.libera.chat:7000".into(), true)
        );
        assert_eq!(
            parse_addr("irc+insecure://127.0.0.1").unwrap(),
            ("127.0.0.1:6667".into(), false)
        );
        assert_eq!(
            parse_addr("irc+insecure://127.0.0.1:6700").unwrap(),
            ("127.0.0.1:6700".into(), false)
        );
        assert_eq!(
            parse_addr("irc.oftc.net").unwrap(),
            ("irc.oftc.net:6697".into(), true)
        );
        assert_eq!(parse_addr("[::1]").unwrap(), ("[::1]:6697".into(), true));
        assert_eq!(
            parse_addr("ircs://[::1]:7000").unwrap(),
            ("[::1]:7000".into(), true)
        );
        for bad in ["http://x", "ircs://", "irc+insecure://a/b", "irc://x"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split(r#"network create -realname "Alice A." -nick a\ b"#).unwrap(),
            ["network", "create", "-realname", "Alice A.", "-nick", "a b"]
        );
        assert!(split(r#"say "unclosed"#).is_err());
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn flags_are_checked() {
        let t = split("x -nick a -admin -name n").unwrap();
        let a = Args::parse(&t, &["nick", "admin", "name"], "u").unwrap();
        assert_eq!(a.words, ["x"]);
        assert_eq!(a.flag("nick").as_deref(), Some("a"));
        assert_eq!(a.flag("admin").as_deref(), Some(""));
        assert!(Args::parse(&split("-bogus 1").unwrap(), &["nick"], "u")
            .unwrap_err()
            .0
            .contains("unknown flag -bogus"));
        assert!(Args::parse(&split("-nick").unwrap(), &["nick"], "u")
            .unwrap_err()
            .0
            .contains("-nick needs a value"));
    }

    #[test]
    fn only_lines_to_bouncerserv_stay_here() {
        let to = |cmd: &str, target: &str| {
            Message::new(cmd, [Bytes::from(target.to_owned()), Bytes::from("help")])
        };
        assert!(addressed(&to("PRIVMSG", "BouncerServ")));
        assert!(addressed(&to("PRIVMSG", "bouncerserv")));
        assert!(addressed(&to("TAGMSG", "BOUNCERSERV")));
        assert!(!addressed(&to("PRIVMSG", "#bouncerserv")));
        assert!(!addressed(&to("JOIN", "BouncerServ")));
    }
}
