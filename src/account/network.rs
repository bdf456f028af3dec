//! A user's networks: add, change (reconnecting when it must), remove, and the
//! announcement of each change to the user's IRC clients.

use super::spec::{check_server, sasl_entry, spec_of};
use super::{bytes, AccountError, NetworkChange, NewNetworkSpec, ACCOUNT_CLIENT};
use crate::irc::Message;
use crate::services::Services;
use crate::store::{Network, User};
use crate::user::{watch, ConnState, Notice};

/// The user's network called `name`.
pub(super) async fn network(
    services: &Services,
    user: &User,
    name: &str,
) -> Result<Network, AccountError> {
    services
        .store
        .network_by_name(user.id, name)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("you have no network {name:?}")))
}

/// Adds a network; it connects at once when the user runs here (through the limiter).
///
/// # Errors
/// `Invalid`, `ServerNotAllowed`, `TooManyNetworks`, `Exists`, `Store`.
pub async fn add_network(
    services: &Services,
    user: &User,
    spec: &NewNetworkSpec,
) -> Result<Network, AccountError> {
    let new = spec.to_spec()?.check()?;
    check_server(&services.accounts, &new.addr)?;
    let max = services.accounts.max_networks_per_user;
    if services.store.networks(user.id).await?.len() >= max {
        return Err(AccountError::TooManyNetworks(format!(
            "you have {max} networks, the most this server allows; remove one first"
        )));
    }
    let network = services.store.create_network(user.id, &new).await?;
    if let Some(h) = services.users.get(user.id) {
        if let Err(e) = h.add_network(network.clone()).await? {
            tracing::error!(user = %user.name, network = %network.name, error = %e, "starting an added network");
            return Err(AccountError::Unavailable);
        }
        refresh_sessions(services, user).await;
    }
    announce(services, user, &network).await;
    tracing::info!(user = %user.name, network = %network.name, addr = %network.addr, "network added by its user");
    Ok(network)
}

/// Changes a network's settings. A change of anything but the nick reconnects it (with
/// the new settings, through the limiter); a nick alone is asked of the server when
/// connected; `enabled: false` disconnects it (QUIT) and keeps it disconnected.
///
/// # Errors
/// `NotFound`, `Invalid`, `ServerNotAllowed` (a new address only), `Store`.
pub async fn update_network(
    services: &Services,
    user: &User,
    name: &str,
    change: &NetworkChange,
) -> Result<Network, AccountError> {
    let old = network(services, user, name).await?;
    let mut spec = spec_of(&old);
    if let Some(addr) = &change.addr {
        spec.addr.clone_from(addr);
    }
    if let Some(tls) = change.tls {
        spec.tls = tls;
    }
    if let Some(v) = &change.tls_verify {
        spec.tls_verify = Some(v.clone());
    }
    if let Some(nick) = &change.nick {
        spec.nick.clone_from(nick);
    }
    if let Some(u) = &change.username {
        spec.username = Some(u.clone()).filter(|s| !s.is_empty());
    }
    if let Some(r) = &change.realname {
        spec.realname = Some(r.clone()).filter(|s| !s.is_empty());
    }
    if let Some(sasl) = &change.sasl {
        spec.sasl = sasl.as_ref().map(sasl_entry).transpose()?;
        if sasl.is_some() {
            spec.sasl_cert = None;
        }
    }
    let new = spec.check()?;
    if new.addr != old.addr {
        check_server(&services.accounts, &new.addr)?;
    }
    let enabled = change.enabled.unwrap_or(old.enabled);
    let updated = services.store.update_network(old.id, &new, enabled).await?;
    let only_nick = same_settings(&old, &updated);
    if let Some(h) = services.users.get(user.id) {
        if only_nick && updated.nick == old.nick {
            // Nothing changed: the connection stays as it is.
        } else if only_nick && connected(services, user, old.id).await {
            let nick = Message::new("NICK", [bytes(&updated.nick)]);
            h.from_client(old.id, ACCOUNT_CLIENT, nick).await?;
        } else {
            restart(services, user, updated.clone()).await?;
        }
    }
    announce(services, user, &updated).await;
    tracing::info!(user = %user.name, network = %updated.name, enabled, "network changed by its user");
    Ok(updated)
}

/// Whether two versions of a network connect alike, nick aside.
fn same_settings(a: &Network, b: &Network) -> bool {
    a.addr == b.addr
        && a.tls == b.tls
        && a.tls_verify == b.tls_verify
        && a.username == b.username
        && a.realname == b.realname
        && a.sasl == b.sasl
        && a.source_ip == b.source_ip
        && a.enabled == b.enabled
}

/// Removes a network: its connection quits, its clients are closed, its backlog goes.
///
/// # Errors
/// `NotFound`, `Store`.
pub async fn remove_network(
    services: &Services,
    user: &User,
    name: &str,
) -> Result<(), AccountError> {
    let net = network(services, user, name).await?;
    if let Some(h) = services.users.get(user.id) {
        h.remove_network(net.id).await?;
    }
    services.store.delete_network(net.id).await?;
    refresh_sessions(services, user).await;
    services
        .users
        .config()
        .watchers
        .send(user.id, Notice::removed(net.id));
    tracing::info!(user = %user.name, network = %net.name, "network removed by its user");
    Ok(())
}

/// Whether the user's network is registered upstream right now.
pub(super) async fn connected(
    services: &Services,
    user: &User,
    network: crate::store::NetworkId,
) -> bool {
    let Some(h) = services.users.get(user.id) else {
        return false;
    };
    h.status().await.is_ok_and(|s| {
        s.iter()
            .any(|s| s.network_id == network && s.state == ConnState::Connected)
    })
}

/// Starts a network again in the running actor with `network`'s settings (and the
/// stored channels): QUIT, then a new connection through the limiter (none when
/// disabled).
pub(super) async fn restart(
    services: &Services,
    user: &User,
    network: Network,
) -> Result<(), AccountError> {
    let Some(h) = services.users.get(user.id) else {
        return Ok(());
    };
    h.remove_network(network.id).await?;
    let name = network.name.clone();
    if let Err(e) = h.add_network(network).await? {
        tracing::error!(user = %user.name, network = %name, error = %e, "restarting a changed network");
        return Err(AccountError::Unavailable);
    }
    refresh_sessions(services, user).await;
    Ok(())
}

/// Tells the user's IRC clients with `soju.im/bouncer-networks-notify` every
/// attribute of `network` as it is now (its state as the running actor has it).
/// Admin changes (`http/admin.rs`) announce through it too.
pub async fn announce(services: &Services, user: &User, network: &Network) {
    let mut state = ConnState::Stopped;
    if let Some(h) = services.users.get(user.id) {
        if let Ok(all) = h.status().await {
            if let Some(s) = all.into_iter().find(|s| s.network_id == network.id) {
                state = s.state;
            }
        }
    }
    let attrs = watch::network_attrs(network, &state);
    services
        .users
        .config()
        .watchers
        .send(user.id, Notice::network(network.id, attrs));
}

/// The node's session counts follow (the heartbeat publishes them).
async fn refresh_sessions(services: &Services, user: &User) {
    if let Err(e) = services.users.refresh_sessions(user.id).await {
        tracing::warn!(user = %user.name, error = %e, "counting a user's sessions");
    }
}
