//! `network create|update|status`: a user's networks through the account operations.

use super::args::{no_words, one_word, parse_addr, unsupported, Args};
use super::{refuse, usage, Answer, Caller, Refusal};
use crate::account::{self, NetworkChange, NewNetworkSpec};
use crate::store::{Network, User};
use crate::user::ConnState;

pub(super) const NETWORK_FLAGS: [&str; 8] = [
    "addr",
    "name",
    "nick",
    "username",
    "realname",
    "pass",
    "enabled",
    "connect-command",
];

pub(super) async fn network_create(caller: &Caller<'_>, user: &User, a: Args) -> Answer {
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

pub(super) async fn network_update(caller: &Caller<'_>, user: &User, a: Args) -> Answer {
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
pub(super) async fn target_network(
    caller: &Caller<'_>,
    user: &User,
    a: &Args,
) -> Result<Network, Refusal> {
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

pub(super) fn state_text(state: &ConnState) -> String {
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

pub(super) async fn network_status(caller: &Caller<'_>, user: &User) -> Answer {
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
