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

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;

use crate::account::{self, AccountError, NetworkChange, NewNetworkSpec, SaslPlain};
use crate::irc::Message;
use crate::services::Services;
use crate::store::{Network, NetworkId, ReattachOn, User, UserId};
use crate::user::ConnState;

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

/// One command line: the words before the flags, the flags (`-name value`, or `-admin`
/// alone for the switches) and the words after.
#[derive(Debug)]
struct Args {
    words: Vec<String>,
    flags: BTreeMap<String, String>,
}

/// The flags of each command that take no value.
const SWITCHES: &[&str] = &["admin"];

impl Args {
    fn parse(tokens: &[String], allowed: &[&str], usage: &str) -> Result<Args, Refusal> {
        let mut words = Vec::new();
        let mut flags = BTreeMap::new();
        let mut it = tokens.iter();
        while let Some(t) = it.next() {
            let Some(flag) = t.strip_prefix('-').filter(|f| !f.is_empty()) else {
                words.push(t.clone());
                continue;
            };
            let flag = flag.trim_start_matches('-').to_ascii_lowercase();
            if !allowed.contains(&flag.as_str()) {
                return Err(refuse(format!(
                    "unknown flag -{flag}; usage: {usage} (see \"help\")"
                )));
            }
            let value = if SWITCHES.contains(&flag.as_str()) {
                String::new()
            } else {
                it.next()
                    .cloned()
                    .ok_or_else(|| refuse(format!("-{flag} needs a value; usage: {usage}")))?
            };
            flags.insert(flag, value);
        }
        Ok(Args { words, flags })
    }

    fn flag(&self, name: &str) -> Option<String> {
        self.flags.get(name).cloned()
    }
}

/// Splits a command line into words: spaces separate, `"…"` groups, `\` escapes.
fn split(text: &str) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.extend(chars.next());
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(refuse("a quote is not closed"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// A server address in soju's forms: `ircs://host[:port]` (TLS, port 6697 by
/// default), `irc+insecure://host[:port]` (plaintext, 6667), or `host[:port]` (TLS).
/// Returns `host:port` and whether TLS is on.
pub fn parse_addr(addr: &str) -> Result<(String, bool), String> {
    let (rest, tls) = match addr.split_once("://") {
        None => (addr, true),
        Some(("ircs", rest)) => (rest, true),
        Some(("irc+insecure", rest)) => (rest, false),
        Some((scheme, _)) => {
            return Err(format!(
                "addr: unknown scheme {scheme:?}: use ircs://HOST:PORT, \
                 irc+insecure://HOST:PORT or HOST:PORT"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "addr: {addr:?}: expected ircs://HOST:PORT, irc+insecure://HOST:PORT or HOST:PORT"
        ));
    }
    // A port is given when a colon follows the host (and any `[v6]` brackets).
    let after_host = rest.rfind(']').map_or(rest, |i| &rest[i..]);
    if after_host.contains(':') {
        Ok((rest.to_owned(), tls))
    } else {
        let port = if tls { 6697 } else { 6667 };
        Ok((format!("{rest}:{port}"), tls))
    }
}

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

/// `user update`: your password, and your auto-away switch and text (`-away-message
/// ""`: back to the server's default).
async fn user_update(caller: &Caller<'_>, user: &User, a: &Args, command: &str) -> Answer {
    let mut lines = Vec::new();
    let (auto_away, text) = (a.flag("auto-away"), a.flag("away-message"));
    if auto_away.is_some() || text.is_some() {
        let auto_away = match auto_away.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => None,
            Some("on" | "true" | "yes") => Some(true),
            Some("off" | "false" | "no") => Some(false),
            Some(other) => return Err(refuse(format!("-auto-away {other:?}: use on or off"))),
        };
        let change = account::AwayChange {
            auto_away,
            away_message: text.map(|t| Some(t).filter(|t| !t.is_empty())),
        };
        let view = account::update_away(caller.services, user, &change).await?;
        let text = view
            .away_message
            .unwrap_or_else(|| format!("{} (the default)", view.default_away_message));
        lines.push(format!(
            "auto-away {}; away message: {text}",
            if view.auto_away { "on" } else { "off" }
        ));
    }
    match (a.flag("password"), a.flag("current")) {
        (Some(new), Some(current)) => {
            let closed =
                account::change_password(caller.services, user, caller.peer, &current, &new, None)
                    .await?;
            lines.push(format!(
                "password changed; {closed} open web connection(s) closed"
            ));
        }
        (Some(_), None) => {
            return Err(refuse(format!(
                "give your current password too: {}",
                usage(command)
            )))
        }
        (None, Some(_)) => {
            return Err(refuse(format!(
                "-password is missing; usage: {}",
                usage(command)
            )))
        }
        (None, None) if lines.is_empty() => {
            return Err(refuse(format!(
                "nothing to change; usage: {}",
                usage(command)
            )))
        }
        (None, None) => {}
    }
    Ok(lines)
}

const NETWORK_FLAGS: [&str; 8] = [
    "addr",
    "name",
    "nick",
    "username",
    "realname",
    "pass",
    "enabled",
    "connect-command",
];

fn no_words(a: &Args, command: &str) -> Result<(), Refusal> {
    match a.words.first() {
        None => Ok(()),
        Some(w) => Err(refuse(format!(
            "unexpected {w:?}; usage: {}",
            usage(command)
        ))),
    }
}

fn one_word(a: &Args, command: &str) -> Result<String, Refusal> {
    match &a.words[..] {
        [one] => Ok(one.clone()),
        _ => Err(refuse(format!("usage: {}", usage(command)))),
    }
}

/// What soju takes and Ferry does not store: refused with what to do instead.
fn unsupported(a: &Args) -> Result<(), Refusal> {
    if a.flags.contains_key("pass") {
        return Err(refuse(
            "-pass: Ferry does not send server passwords; use \"sasl set-plain\" for a \
             network account",
        ));
    }
    if a.flags.contains_key("connect-command") {
        return Err(refuse("-connect-command is not supported"));
    }
    Ok(())
}

async fn network_create(caller: &Caller<'_>, user: &User, a: Args) -> Answer {
    no_words(&a, "network create")?;
    unsupported(&a)?;
    if a.flags.contains_key("enabled") {
        return Err(refuse("-enabled: a new network connects; disable it after with \"network update NAME -enabled false\""));
    }
    let addr = a.flag("addr").ok_or_else(|| {
        refuse(format!(
            "-addr is missing; usage: {}",
            usage("network create")
        ))
    })?;
    let (addr, tls) = parse_addr(&addr).map_err(|m| refuse(format!("-{m}")))?;
    let host = addr.rsplit_once(':').map_or(&addr[..], |(h, _)| h);
    let spec = NewNetworkSpec {
        name: a
            .flag("name")
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned()),
        addr: addr.clone(),
        tls,
        nick: a.flag("nick").unwrap_or_else(|| user.name.clone()),
        username: a.flag("username"),
        realname: a.flag("realname"),
        ..NewNetworkSpec::default()
    };
    let net = account::add_network(caller.services, user, &spec).await?;
    Ok(vec![format!(
        "created network {:?} ({}{}); connecting",
        net.name,
        net.addr,
        if net.tls { ", TLS" } else { "" }
    )])
}

async fn network_update(caller: &Caller<'_>, user: &User, a: Args) -> Answer {
    let name = one_word(&a, "network update")?;
    unsupported(&a)?;
    if a.flags.contains_key("name") {
        return Err(refuse(
            "-name: a network cannot be renamed; create another one",
        ));
    }
    let mut change = NetworkChange {
        nick: a.flag("nick"),
        username: a.flag("username"),
        realname: a.flag("realname"),
        ..NetworkChange::default()
    };
    if let Some(addr) = a.flag("addr") {
        let (addr, tls) = parse_addr(&addr).map_err(|m| refuse(format!("-{m}")))?;
        change.addr = Some(addr);
        change.tls = Some(tls);
    }
    if let Some(e) = a.flag("enabled") {
        change.enabled = Some(match e.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => true,
            "false" | "no" | "off" | "0" => false,
            _ => return Err(refuse(format!("-enabled {e:?}: use true or false"))),
        });
    }
    if a.flags.is_empty() {
        return Err(refuse(format!(
            "nothing to change; usage: {}",
            usage("network update")
        )));
    }
    let net = account::update_network(caller.services, user, &name, &change).await?;
    Ok(vec![format!("updated network {:?}", net.name)])
}

/// `-network NAME`, or the network the client is attached to.
async fn target_network(caller: &Caller<'_>, user: &User, a: &Args) -> Result<Network, Refusal> {
    let nets = caller.services.store.networks(user.id).await?;
    let found = match a.flag("network") {
        Some(name) => nets.into_iter().find(|n| n.name == name),
        None => nets.into_iter().find(|n| n.id == caller.network),
    };
    found.ok_or_else(|| {
        refuse(format!(
            "you have no network {:?}; \"network status\" lists them",
            a.flag("network").unwrap_or_default()
        ))
    })
}

fn state_text(state: &ConnState) -> String {
    match state {
        ConnState::Connecting { attempt, .. } => format!("connecting (attempt {attempt})"),
        ConnState::Registering { .. } => "registering".into(),
        ConnState::Connected => "connected".into(),
        ConnState::Disconnected {
            reason, retrying, ..
        } => {
            if *retrying {
                format!("disconnected ({reason}), retrying")
            } else {
                format!("disconnected ({reason})")
            }
        }
        ConnState::Stopped => "stopped".into(),
    }
}

async fn network_status(caller: &Caller<'_>, user: &User) -> Answer {
    let nets = caller.services.store.networks(user.id).await?;
    let live = match caller.services.users.get(user.id) {
        Some(h) => h.status().await.unwrap_or_default(),
        None => Vec::new(),
    };
    if nets.is_empty() {
        return Ok(vec![
            "you have no networks; add one with \"network create -addr ADDR\"".into(),
        ]);
    }
    Ok(nets
        .iter()
        .map(|n| {
            let l = live.iter().find(|s| s.network_id == n.id);
            let state = match l {
                _ if !n.enabled => "disabled".to_owned(),
                Some(s) => state_text(&s.state),
                None => "not running".to_owned(),
            };
            let nick = l.map_or(&n.nick, |s| &s.nick);
            let scheme = if n.tls { "ircs" } else { "irc+insecure" };
            format!(
                "{}: {scheme}://{}, nick {nick}, {state}{}",
                n.name,
                n.addr,
                l.map(|s| format!(", {} channels", s.channels.len()))
                    .unwrap_or_default()
            )
        })
        .collect())
}

/// `channel update #chan [-detached true|false] [-reattach-on message|highlight|none]`.
async fn channel_update(
    caller: &Caller<'_>,
    user: &User,
    a: &Args,
    chan: &str,
    command: &str,
) -> Answer {
    let detached = match a
        .flag("detached")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None => None,
        Some("true" | "on" | "yes") => Some(true),
        Some("false" | "off" | "no") => Some(false),
        Some(other) => return Err(refuse(format!("-detached {other:?}: use true or false"))),
    };
    let reattach_on = match a.flag("reattach-on") {
        None => None,
        Some(v) => Some(ReattachOn::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
            refuse(format!(
                "-reattach-on {v:?}: use message, highlight or none"
            ))
        })?),
    };
    if detached.is_none() && reattach_on.is_none() {
        return Err(refuse(format!(
            "nothing to change; usage: {}",
            usage(command)
        )));
    }
    let net = target_network(caller, user, a).await?;
    let change = account::ChannelUpdate {
        detached,
        reattach_on,
    };
    account::update_channel(caller.services, user, &net.name, chan, &change).await?;
    let mut out = vec![];
    if let Some(d) = detached {
        out.push(format!(
            "{}: {chan} {}",
            net.name,
            if d { "detached" } else { "attached" }
        ));
    }
    if let Some(r) = reattach_on {
        out.push(format!("{}: {chan} reattaches on {}", net.name, r.as_str()));
    }
    Ok(out)
}

async fn channel_status(caller: &Caller<'_>, user: &User, a: &Args) -> Answer {
    let net = target_network(caller, user, a).await?;
    let live = match caller.services.users.get(user.id) {
        Some(h) => h.status().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let joined: Vec<String> = live
        .into_iter()
        .find(|s| s.network_id == net.id)
        .map(|s| s.channels)
        .unwrap_or_default();
    let buffers = caller.services.store.buffers(net.id).await?;
    let stored: Vec<String> = buffers
        .iter()
        .filter(|b| b.joined)
        .map(|b| String::from_utf8_lossy(&b.name).into_owned())
        .collect();
    let detached = |c: &str| {
        buffers
            .iter()
            .any(|b| b.detached && String::from_utf8_lossy(&b.name).eq_ignore_ascii_case(c))
    };
    let mut out = Vec::new();
    for c in &joined {
        let d = if detached(c) { ", detached" } else { "" };
        out.push(format!("{}: {c} (joined{d})", net.name));
    }
    for c in stored
        .iter()
        .filter(|c| !joined.iter().any(|j| j.eq_ignore_ascii_case(c)))
    {
        out.push(format!("{}: {c} (not joined yet)", net.name));
    }
    if out.is_empty() {
        out.push(format!("{}: no channels", net.name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
