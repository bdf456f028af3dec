//! `soju.im/bouncer-networks`: the `BOUNCER` command (`LISTNETWORKS`, `ADDNETWORK`,
//! `CHANGENETWORK`, `DELNETWORK`; `BIND` is registration's, in `registration` and
//! `login`), network attributes in message-tag form, `BOUNCER_NETID` in ISUPPORT,
//! and the connection bound to no network (`unbound`), which speaks only `BOUNCER`
//! and to `BouncerServ`.
//!
//! Every change is an `account` operation (the same validation and errors as the
//! user API and BouncerServ); its error becomes soju's standard reply (`FAIL BOUNCER
//! INVALID_ATTRIBUTE ADDNETWORK * host :…`). The notices of
//! `soju.im/bouncer-networks-notify` are sent by whoever changes a network (the
//! account operations, the actor for a connection's state) through `user::Watchers`.

use bytes::Bytes;

use super::caps::Caps;
use crate::account::{self, AccountError, NetworkChange, NewNetworkSpec};
use crate::irc::{numeric, Message, Tag};
use crate::services::Services;
use crate::store::{Network, NetworkId, User, UserId};
use crate::user::{watch, ConnState};

/// Where a `BOUNCER` command comes from.
pub struct Ctx<'a> {
    pub services: &'a Services,
    pub user_id: UserId,
    pub caps: &'a Caps,
    pub server: &'a str,
    pub nick: &'a str,
}

/// A standard reply `FAIL BOUNCER <code> <context…> :<description>`.
fn fail(server: &str, code: &str, context: &[&str], description: &str) -> Message {
    let mut params = vec!["BOUNCER".to_owned(), code.to_owned()];
    params.extend(context.iter().map(|c| {
        if crate::irc::is_word(c.as_bytes()) {
            (*c).to_owned()
        } else {
            "*".to_owned()
        }
    }));
    params.push(description.to_owned());
    Message::new("FAIL", params).with_prefix(server.to_owned())
}

/// The `005` line naming the network a connection is bound to.
pub fn isupport(server: &str, nick: &str, network: NetworkId) -> Message {
    Message::new(
        numeric::RPL_ISUPPORT,
        [
            nick.to_owned(),
            format!("BOUNCER_NETID={network}"),
            "are supported by this server".to_owned(),
        ],
    )
    .with_prefix(server.to_owned())
}

/// Handles one `BOUNCER` command of a registered client; the lines to send back.
pub async fn handle(ctx: &Ctx<'_>, msg: &Message) -> Vec<Message> {
    let server = ctx.server;
    let Some(sub) = msg.param_str(0).map(|s| s.to_ascii_uppercase()) else {
        let e = super::error::ProtoError::NeedMoreParams("BOUNCER".into());
        return vec![e.to_message(server, ctx.nick)];
    };
    let user = match ctx.services.store.user(ctx.user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return vec![fail(server, "ACCOUNT_REQUIRED", &[&sub], "No account")],
        Err(e) => {
            tracing::error!(error = %e, "BOUNCER: the store failed");
            return vec![fail(server, "INTERNAL_ERROR", &[&sub], "Internal error")];
        }
    };
    let param = |i: usize| msg.param_str(i).map(|s| s.into_owned());
    match sub.as_str() {
        "LISTNETWORKS" => list(ctx.services, &user, ctx.caps, server).await,
        "BIND" => vec![fail(
            server,
            "REGISTRATION_IS_COMPLETED",
            &["BIND"],
            "Cannot bind to a network after registration",
        )],
        "ADDNETWORK" => {
            let Some(attrs) = param(1) else {
                return vec![fail(
                    server,
                    "NEED_ATTRIBUTE",
                    &["ADDNETWORK", "host"],
                    "Missing required attribute",
                )];
            };
            match add(ctx.services, &user, &attrs).await {
                Ok(id) => vec![reply(server, "ADDNETWORK", id)],
                Err(f) => vec![f.render(server, "ADDNETWORK", "*")],
            }
        }
        "CHANGENETWORK" | "DELNETWORK" => {
            let Some(netid) = param(1) else {
                let e = super::error::ProtoError::NeedMoreParams("BOUNCER".into());
                return vec![e.to_message(server, ctx.nick)];
            };
            let Some(net) = own_network(ctx.services, &user, &netid).await else {
                return vec![fail(
                    server,
                    "INVALID_NETID",
                    &[&sub, &netid],
                    "Network not found",
                )];
            };
            let done = if sub == "DELNETWORK" {
                account::remove_network(ctx.services, &user, &net.name)
                    .await
                    .map_err(Failure::Account)
            } else {
                change(ctx.services, &user, &net, param(2).as_deref().unwrap_or("")).await
            };
            match done {
                Ok(()) => vec![reply(server, &sub, net.id)],
                Err(f) => vec![f.render(server, &sub, &netid)],
            }
        }
        _ => vec![fail(
            server,
            "UNKNOWN_COMMAND",
            &[&sub],
            "Unknown subcommand",
        )],
    }
}

fn reply(server: &str, sub: &str, id: NetworkId) -> Message {
    Message::new("BOUNCER", [sub.to_owned(), id.to_string()]).with_prefix(server.to_owned())
}

/// The user's network with the id `netid`, if it is one of theirs.
async fn own_network(services: &Services, user: &User, netid: &str) -> Option<Network> {
    let id = netid.parse::<NetworkId>().ok()?;
    match services.store.network(id).await {
        Ok(n) => n.filter(|n| n.user_id == user.id),
        Err(e) => {
            tracing::error!(error = %e, "BOUNCER: the store failed");
            None
        }
    }
}

/// Every network of the user with all its attributes, in a
/// `soju.im/bouncer-networks` batch when the client has `batch`.
pub async fn list(services: &Services, user: &User, caps: &Caps, server: &str) -> Vec<Message> {
    let networks = match services.store.networks(user.id).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "BOUNCER LISTNETWORKS: the store failed");
            return vec![fail(
                server,
                "INTERNAL_ERROR",
                &["LISTNETWORKS"],
                "Internal error",
            )];
        }
    };
    let states = match services.users.get(user.id) {
        Some(h) => h.status().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let batch = caps
        .has("batch")
        .then(|| format!("{:x}", rand::random::<u32>()));
    let mut out = Vec::new();
    if let Some(r) = &batch {
        out.push(
            Message::new(
                "BATCH",
                [format!("+{r}"), "soju.im/bouncer-networks".to_owned()],
            )
            .with_prefix(server.to_owned()),
        );
    }
    for n in &networks {
        let state = states
            .iter()
            .find(|s| s.network_id == n.id)
            .map_or(ConnState::Stopped, |s| s.state.clone());
        let mut m = watch::network_line(n.id, &watch::network_attrs(n, &state))
            .with_prefix(server.to_owned());
        if let Some(r) = &batch {
            m.set_tag("batch", Some(r));
        }
        out.push(m);
    }
    if let Some(r) = &batch {
        out.push(Message::new("BATCH", [format!("-{r}")]).with_prefix(server.to_owned()));
    }
    out
}

/// Why a change was refused.
#[derive(Debug)]
enum Failure {
    /// A soju error code about one attribute.
    Attribute {
        code: &'static str,
        attr: String,
        text: String,
    },
    Account(AccountError),
}

impl Failure {
    fn attr(code: &'static str, attr: &str, text: impl Into<String>) -> Failure {
        Failure::Attribute {
            code,
            attr: attr.to_owned(),
            text: text.into(),
        }
    }

    /// The reply to `sub` about `netid` (`*` for a new network).
    fn render(self, server: &str, sub: &str, netid: &str) -> Message {
        match self {
            // `NEED_ATTRIBUTE` names no network (it is always `ADDNETWORK`'s).
            Failure::Attribute { code, attr, text } if code == "NEED_ATTRIBUTE" => {
                fail(server, code, &[sub, &attr], &text)
            }
            Failure::Attribute { code, attr, text } => {
                fail(server, code, &[sub, netid, &attr], &text)
            }
            Failure::Account(e) => {
                let text = e.to_string();
                match &e {
                    AccountError::Invalid(msg) => {
                        let field = msg.split_once(':').map_or("", |(f, _)| f.trim());
                        let attr = match field {
                            "addr" => "host",
                            "nick" => "nickname",
                            "tls_verify" => "tls",
                            "name" | "username" | "realname" => field,
                            _ => "*",
                        };
                        fail(server, "INVALID_ATTRIBUTE", &[sub, netid, attr], &text)
                    }
                    AccountError::ServerNotAllowed(_) => {
                        fail(server, "INVALID_ATTRIBUTE", &[sub, netid, "host"], &text)
                    }
                    AccountError::Exists(_) => {
                        fail(server, "INVALID_ATTRIBUTE", &[sub, netid, "name"], &text)
                    }
                    AccountError::TooManyNetworks(_) => {
                        fail(server, "TOO_MANY_NETWORKS", &[sub, netid], &text)
                    }
                    AccountError::NotFound(_) => {
                        fail(server, "INVALID_NETID", &[sub, netid], "Network not found")
                    }
                    AccountError::Store(_) => {
                        fail(server, "INTERNAL_ERROR", &[sub, netid], "Internal error")
                    }
                    _ => fail(server, "TEMPORARILY_UNAVAILABLE", &[sub, netid], &text),
                }
            }
        }
    }
}

/// The attributes a client may set.
const WRITABLE: &[&str] = &[
    "name", "host", "port", "tls", "nickname", "username", "realname", "pass",
];
/// The attributes only the bouncer sets.
const READ_ONLY: &[&str] = &["state", "error"];

/// Parses attributes, refusing unknown and read-only ones (a read-only one is
/// accepted when it equals `current`'s value, as clients echo what they listed).
fn parse_attrs(raw: &str) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    for Tag { key, value } in crate::irc::parse_tag_list(raw.as_bytes()) {
        if READ_ONLY.contains(&key.as_str()) {
            return Err(Failure::attr(
                "READ_ONLY_ATTRIBUTE",
                &key,
                "Read-only attribute",
            ));
        }
        if !WRITABLE.contains(&key.as_str()) {
            return Err(Failure::attr(
                "UNKNOWN_ATTRIBUTE",
                &key,
                "Unknown attribute",
            ));
        }
        let value = value.unwrap_or_default();
        if key == "pass" && !value.is_empty() {
            return Err(Failure::attr(
                "INVALID_ATTRIBUTE",
                "pass",
                "Server passwords are not supported",
            ));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn tls_of(v: &str) -> Result<bool, Failure> {
    match v {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(Failure::attr("INVALID_ATTRIBUTE", "tls", "tls is 1 or 0")),
    }
}

fn port_of(v: &str) -> Result<u16, Failure> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Failure::attr("INVALID_ATTRIBUTE", "port", "Invalid port"))
}

fn addr_of(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `BOUNCER ADDNETWORK`: `host` is required; `tls` defaults to `1`, `port` to 6697
/// with TLS and 6667 without, `name` to the host, `nickname` to the user's name.
async fn add(services: &Services, user: &User, raw: &str) -> Result<NetworkId, Failure> {
    let attrs = parse_attrs(raw)?;
    let get = |k: &str| {
        attrs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let host = get("host")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Failure::attr("NEED_ATTRIBUTE", "host", "Missing required attribute"))?;
    let tls = get("tls").map_or(Ok(true), |v| tls_of(&v))?;
    let port = match get("port") {
        Some(p) => port_of(&p)?,
        None if tls => 6697,
        None => 6667,
    };
    let spec = NewNetworkSpec {
        name: get("name")
            .filter(|n| !n.is_empty())
            .unwrap_or(host.clone()),
        addr: addr_of(&host, port),
        tls,
        nick: get("nickname")
            .filter(|n| !n.is_empty())
            .unwrap_or(user.name.clone()),
        username: get("username"),
        realname: get("realname"),
        ..NewNetworkSpec::default()
    };
    let n = account::add_network(services, user, &spec)
        .await
        .map_err(Failure::Account)?;
    Ok(n.id)
}

/// `BOUNCER CHANGENETWORK`: any writable attribute but `name` (networks are not
/// renamed: a different name is read-only).
async fn change(services: &Services, user: &User, net: &Network, raw: &str) -> Result<(), Failure> {
    let attrs = parse_attrs(raw)?;
    if attrs.is_empty() {
        return Err(Failure::attr(
            "NEED_ATTRIBUTE",
            "*",
            "Give at least one attribute",
        ));
    }
    let (mut host, mut port) = match net.addr.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p.parse::<u16>().unwrap_or(6697),
        ),
        None => (net.addr.clone(), 6697),
    };
    let mut c = NetworkChange::default();
    let mut addr_changed = false;
    for (k, v) in &attrs {
        match k.as_str() {
            "name" if *v != net.name => {
                return Err(Failure::attr(
                    "READ_ONLY_ATTRIBUTE",
                    "name",
                    "Networks cannot be renamed",
                ))
            }
            "host" => {
                host.clone_from(v);
                addr_changed = true;
            }
            "port" => {
                port = port_of(v)?;
                addr_changed = true;
            }
            "tls" => c.tls = Some(tls_of(v)?),
            "nickname" => c.nick = Some(v.clone()),
            "username" => c.username = Some(v.clone()),
            "realname" => c.realname = Some(v.clone()),
            _ => {}
        }
    }
    if addr_changed {
        c.addr = Some(addr_of(&host, port));
    }
    account::update_network(services, user, &net.name, &c)
        .await
        .map_err(Failure::Account)?;
    Ok(())
}

/// The burst of a connection bound to no network: welcome, our ISUPPORT, no MOTD.
pub fn unbound_burst(server: &str, nick: &str) -> Vec<Message> {
    let num = |code: &str, params: Vec<String>| {
        let mut p = vec![nick.to_owned()];
        p.extend(params);
        Message::new(code, p).with_prefix(server.to_owned())
    };
    let version = format!("ferry-{}", env!("CARGO_PKG_VERSION"));
    vec![
        num(
            numeric::RPL_WELCOME,
            vec![format!(
                "Welcome to Ferry, {nick}; this connection is bound to no network: \
                 manage your networks with BOUNCER or /msg BouncerServ help"
            )],
        ),
        num(
            numeric::RPL_YOURHOST,
            vec![format!("Your host is {server}, running version {version}")],
        ),
        num(
            numeric::RPL_CREATED,
            vec!["This server was created some time ago".to_owned()],
        ),
        num(
            numeric::RPL_MYINFO,
            vec![server.to_owned(), version, "iorsw".to_owned()],
        ),
        num(
            numeric::RPL_ISUPPORT,
            vec![
                "BOUNCER_NETID".to_owned(),
                "CASEMAPPING=ascii".to_owned(),
                "are supported by this server".to_owned(),
            ],
        ),
        num(numeric::ERR_NOMOTD, vec!["MOTD File is missing".to_owned()]),
    ]
}

/// A line from the actor's world for a client: the notice's line from `server`, if
/// the client negotiated its capability and (for a network's notice) is bound to it.
pub fn notice_for(
    notice: &crate::user::Notice,
    caps: &Caps,
    bound: Option<NetworkId>,
    server: &str,
) -> Option<Message> {
    if !caps.has(notice.cap) {
        return None;
    }
    if notice.network.is_some() && notice.network != bound {
        return None;
    }
    Some(
        notice
            .msg
            .clone()
            .with_prefix(Bytes::from(server.to_owned())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_and_refuse() {
        let a = parse_attrs("host=irc.example;port=6667;tls=0;realname=A\\sB").unwrap();
        assert_eq!(a[3], ("realname".to_owned(), "A B".to_owned()));
        for (raw, code, attr) in [
            ("state=connected", "READ_ONLY_ATTRIBUTE", "state"),
            ("bogus=1", "UNKNOWN_ATTRIBUTE", "bogus"),
            ("pass=secret", "INVALID_ATTRIBUTE", "pass"),
        ] {
            match parse_attrs(raw) {
                Err(Failure::Attribute {
                    code: c, attr: a, ..
                }) => {
                    assert_eq!((c, a.as_str()), (code, attr), "{raw}")
                }
                _ => panic!("{raw} accepted"),
            }
        }
        assert!(tls_of("yes").is_err());
        assert!(port_of("0").is_err() && port_of("70000").is_err());
        assert_eq!(addr_of("::1", 6667), "[::1]:6667");
        let m = Failure::attr("NEED_ATTRIBUTE", "host", "Missing required attribute").render(
            "ferry",
            "ADDNETWORK",
            "*",
        );
        assert_eq!(
            m.to_string(),
            ":ferry FAIL BOUNCER NEED_ATTRIBUTE ADDNETWORK host :Missing required attribute"
        );
    }
}
