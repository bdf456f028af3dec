//! `channel update|status`: detach and attach a channel, and list a network's channels.

use super::args::Args;
use super::network::target_network;
use super::{refuse, usage, Answer, Caller};
use crate::account;
use crate::store::{ReattachOn, User};

/// `channel update #chan [-detached true|false] [-reattach-on message|highlight|none]`.
pub(super) async fn channel_update(
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

pub(super) async fn channel_status(caller: &Caller<'_>, user: &User, a: &Args) -> Answer {
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
