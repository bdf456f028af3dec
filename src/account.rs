//! A user's own account: what a person may change themselves — their networks
//! (add, edit, connect or disconnect, remove), their channels (join, part) and their
//! password — with one validation and one set of errors whichever door they use (the
//! user API, `http/account.rs`; IRC's `BouncerServ`, `downstream/bouncerserv`, and
//! `soju.im/bouncer-networks`, `downstream/bouncer`) — and announces every network
//! change to the user's IRC clients (`user::Notice`). Invalid input names the
//! field plainly (`addr: …`) for each door to show or reword.
//!
//! Every operation runs on the node that runs the user (a door on another node passes
//! the call on first) and changes the store and the running actor together, as the
//! admin API does: a new network connects at once, an edited one reconnects with its
//! new settings, a removed one quits. Connections are dialled by the actor's upstream
//! tasks, so every new connect waits for the limiter like any other. A user nobody
//! runs is changed in the store only; whoever starts it loads it from there.
//!
//! The operator bounds it (`[accounts]`, [`AccountSettings`]): networks per user and
//! the servers users may add. Admin changes (`http/admin.rs`, the CLI) are not bound.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use crate::admin::{AdminError, NetworkSpec, SpecError};
use crate::auth::{Door, Refused};
use crate::config::AccountSettings;
use crate::irc::{Casemapping, Message};
use crate::services::{Control, Services};
use crate::store::{Network, ReattachOn, Sasl, StoreError, User};
use crate::user::{watch, ConnState, DetachError, DownstreamId, Notice};

/// The client id of lines the account operations send through the actor (JOIN, PART,
/// NICK): no attached client has it (the actor numbers clients from 1), so replies
/// nobody asked for go to every client as usual.
const ACCOUNT_CLIENT: DownstreamId = 0;

/// Why an account operation was refused. Each kind has a stable [`code`](Self::code)
/// that every door shows (the HTTP API as `error.code`).
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input is not valid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The server is not on the operator's allow list.
    #[error("{0}")]
    ServerNotAllowed(String),
    /// The user has as many networks as the operator allows.
    #[error("{0}")]
    TooManyNetworks(String),
    /// No such network (or channel) for this user.
    #[error("{0}")]
    NotFound(String),
    /// A network with this name exists.
    #[error("{0}")]
    Exists(String),
    /// The current password given to change it is wrong.
    #[error("the current password is wrong")]
    WrongPassword,
    /// Too many failed password checks, or the hashing pool is full.
    #[error(transparent)]
    Refused(Refused),
    /// The user's session ended while it was being changed; try again.
    #[error("the session is restarting; try again")]
    Unavailable,
    #[error(transparent)]
    Store(StoreError),
}

impl AccountError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::Invalid(_) => "bad_request",
            AccountError::ServerNotAllowed(_) => "server_not_allowed",
            AccountError::TooManyNetworks(_) => "too_many_networks",
            AccountError::NotFound(_) => "not_found",
            AccountError::Exists(_) => "conflict",
            AccountError::WrongPassword => "invalid_credentials",
            AccountError::Refused(Refused::Throttled { .. }) => "rate_limited",
            AccountError::Refused(Refused::Busy) | AccountError::Unavailable => "unavailable",
            AccountError::Store(_) => "internal",
        }
    }
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> AccountError {
        match e {
            StoreError::Conflict(what) => AccountError::Exists(format!("{what} already exists")),
            StoreError::NotFound(what) => AccountError::NotFound(format!("no {what}")),
            other => AccountError::Store(other),
        }
    }
}

impl From<AdminError> for AccountError {
    fn from(e: AdminError) -> AccountError {
        match e {
            AdminError::Invalid(msg) => AccountError::Invalid(msg),
            AdminError::Store(e) => e.into(),
            AdminError::Busy(_) => AccountError::Refused(Refused::Busy),
        }
    }
}

impl From<SpecError> for AccountError {
    /// The field named as the user doors name it (`addr: …`), not as a CLI flag.
    fn from(e: SpecError) -> AccountError {
        AccountError::Invalid(e.neutral())
    }
}

impl From<crate::user::UserError> for AccountError {
    fn from(_: crate::user::UserError) -> AccountError {
        AccountError::Unavailable
    }
}

fn bytes(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

fn invalid(msg: impl Into<String>) -> AccountError {
    AccountError::Invalid(msg.into())
}

/// SASL PLAIN credentials for the network.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaslPlain {
    pub account: String,
    pub password: String,
}

/// A channel to be in, with its key if it has one.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// `#name`.
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
}

/// A network as a user adds it.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNetworkSpec {
    /// The network's name in Ferry (`PASS user/NAME:…`): letters, digits, `-_.`.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    #[serde(default)]
    pub tls: bool,
    /// `verify` (default), `insecure`, or `pin:SHA256HEX` of the server certificate.
    #[serde(default)]
    pub tls_verify: Option<String>,
    pub nick: String,
    /// The ident/user name; default: the Ferry user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Default: the nick.
    #[serde(default)]
    pub realname: Option<String>,
    #[serde(default)]
    pub sasl: Option<SaslPlain>,
    #[serde(default)]
    pub channels: Vec<ChannelSpec>,
}

/// Changes to a network: every field is optional; what is absent stays.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkChange {
    pub addr: Option<String>,
    pub tls: Option<bool>,
    /// `verify`, `insecure`, or `pin:SHA256HEX`.
    pub tls_verify: Option<String>,
    pub nick: Option<String>,
    /// Empty: back to the default (the Ferry user name).
    pub username: Option<String>,
    /// Empty: back to the default (the nick).
    pub realname: Option<String>,
    /// New SASL PLAIN credentials; `null` removes them (a certificate the operator
    /// set for SASL EXTERNAL stays).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SaslPlain>)]
    pub sasl: Option<Option<SaslPlain>>,
    /// `false` disconnects the network and keeps it so (across restarts); `true`
    /// connects it.
    pub enabled: Option<bool>,
}

/// A field that is present (possibly `null`) is `Some`; an absent one stays `None`
/// through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl ChannelSpec {
    /// As `NetworkSpec` takes it: `#name` or `#name key`.
    fn entry(&self) -> Result<String, AccountError> {
        check_channel(&self.name, self.key.as_deref())?;
        Ok(match &self.key {
            Some(k) if !k.is_empty() => format!("{} {k}", self.name),
            _ => self.name.clone(),
        })
    }
}

/// Checks a channel name and key as a user gives them.
fn check_channel(name: &str, key: Option<&str>) -> Result<(), AccountError> {
    let bad_char = |s: &str| s.chars().any(|c| c.is_control() || c == ' ' || c == ',');
    if !name.starts_with(['#', '&', '!', '+']) || name.len() < 2 || name.len() > 200 {
        return Err(invalid(format!(
            "invalid channel {name:?}: channels start with # (at most 200 bytes)"
        )));
    }
    if bad_char(name) {
        return Err(invalid(format!(
            "invalid channel {name:?}: no spaces, commas or control characters"
        )));
    }
    if key.is_some_and(|k| bad_char(k) || k.len() > 100) {
        return Err(invalid(format!(
            "invalid key for {name:?}: no spaces, commas or control characters (at most 100 bytes)"
        )));
    }
    Ok(())
}

impl NewNetworkSpec {
    /// The admin form of the same network (so both paths validate alike); a user
    /// cannot set a source address or a certificate file of the server's.
    fn to_spec(&self) -> Result<NetworkSpec, AccountError> {
        let sasl = self.sasl.as_ref().map(sasl_entry).transpose()?;
        Ok(NetworkSpec {
            name: self.name.clone(),
            addr: self.addr.clone(),
            tls: self.tls,
            tls_verify: self.tls_verify.clone(),
            nick: self.nick.clone(),
            username: self.username.clone().filter(|s| !s.is_empty()),
            realname: self.realname.clone().filter(|s| !s.is_empty()),
            sasl,
            sasl_cert: None,
            source_ip: None,
            channels: self
                .channels
                .iter()
                .map(ChannelSpec::entry)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// SASL PLAIN as `NetworkSpec` takes it (`account:password`).
fn sasl_entry(s: &SaslPlain) -> Result<String, AccountError> {
    if s.account.is_empty() || s.account.contains(':') {
        return Err(invalid("invalid sasl.account: not empty, and no ':' in it"));
    }
    if s.password.is_empty() {
        return Err(invalid("invalid sasl.password: it is empty"));
    }
    Ok(format!("{}:{}", s.account, s.password))
}

/// The spec a stored network was made from (no channels: they are not changed here).
fn spec_of(n: &Network) -> NetworkSpec {
    let (sasl, sasl_cert) = match &n.sasl {
        Some(Sasl::Plain { username, password }) => (Some(format!("{username}:{password}")), None),
        Some(Sasl::External { cert_path }) => (None, Some(cert_path.clone())),
        None => (None, None),
    };
    NetworkSpec {
        name: n.name.clone(),
        addr: n.addr.clone(),
        tls: n.tls,
        tls_verify: Some(n.tls_verify.to_db()),
        nick: n.nick.clone(),
        username: n.username.clone(),
        realname: n.realname.clone(),
        sasl,
        sasl_cert,
        source_ip: n.source_ip.clone(),
        channels: Vec::new(),
    }
}

/// Whether the operator lets users add a network on `addr` (`host:port`, checked).
fn check_server(settings: &AccountSettings, addr: &str) -> Result<(), AccountError> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| invalid(format!("addr: {addr:?}: expected HOST:PORT")))?;
    if settings.allows(host, port) {
        Ok(())
    } else {
        Err(AccountError::ServerNotAllowed(format!(
            "this server does not let users connect to {addr}; allowed: {}",
            settings.allowed_servers.join(", ")
        )))
    }
}

/// The user's network called `name`.
async fn network(services: &Services, user: &User, name: &str) -> Result<Network, AccountError> {
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

/// What a join or part did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelChange {
    /// Sent to the connected server; the session remembers the channel when the
    /// server confirms (a refusal — a ban, a wrong key — comes back as the server's
    /// error to the user's clients).
    Sent,
    /// The network is not connected: the channel list is saved and used when it
    /// connects.
    Saved,
}

/// Joins a channel and keeps it joined (rejoined after every reconnect and restart).
///
/// # Errors
/// `NotFound`, `Invalid`, `Store`.
pub async fn join_channel(
    services: &Services,
    user: &User,
    network_name: &str,
    channel: &str,
    key: Option<&str>,
) -> Result<ChannelChange, AccountError> {
    check_channel(channel, key)?;
    let key = key.filter(|k| !k.is_empty());
    let net = network(services, user, network_name).await?;
    channel_change(services, user, &net, channel, key, true).await
}

/// Parts a channel and forgets it (not rejoined).
///
/// # Errors
/// `NotFound`, `Invalid`, `Store`.
pub async fn part_channel(
    services: &Services,
    user: &User,
    network_name: &str,
    channel: &str,
) -> Result<ChannelChange, AccountError> {
    check_channel(channel, None)?;
    let net = network(services, user, network_name).await?;
    channel_change(services, user, &net, channel, None, false).await
}

async fn channel_change(
    services: &Services,
    user: &User,
    net: &Network,
    channel: &str,
    key: Option<&str>,
    join: bool,
) -> Result<ChannelChange, AccountError> {
    let running = services.users.get(user.id);
    if let Some(h) = &running {
        if connected(services, user, net.id).await {
            // The actor remembers the channel (and its key) when the server confirms,
            // with a fenced store write: the same path as a client's JOIN.
            let msg = if join {
                let mut params = vec![bytes(channel)];
                params.extend(key.map(bytes));
                Message::new("JOIN", params)
            } else {
                Message::new("PART", [bytes(channel)])
            };
            h.from_client(net.id, ACCOUNT_CLIENT, msg).await?;
            return Ok(ChannelChange::Sent);
        }
    }
    // Not connected: the stored list is what the next registration joins. The
    // server's casemapping is unknown here; rfc1459, the IRC default, as at creation.
    let folded = Casemapping::Rfc1459.fold(channel.as_bytes());
    if !join {
        let known = services
            .store
            .buffers(net.id)
            .await?
            .iter()
            .any(|b| b.key == folded && b.joined);
        if !known {
            return Err(AccountError::NotFound(format!(
                "{:?} is not in {channel}",
                net.name
            )));
        }
    }
    services
        .store
        .set_channel(
            net.id,
            channel.as_bytes(),
            &folded,
            join,
            key.map(str::as_bytes),
        )
        .await?;
    if running.is_some() && net.enabled {
        // The actor keeps the channels to join in memory: it takes the new list
        // from the store by starting the (disconnected) network again.
        restart(services, user, net.clone()).await?;
    }
    Ok(ChannelChange::Saved)
}

/// Whether the user's network is registered upstream right now.
async fn connected(services: &Services, user: &User, network: crate::store::NetworkId) -> bool {
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
async fn restart(services: &Services, user: &User, network: Network) -> Result<(), AccountError> {
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

/// Changes to one of your channels: what is absent stays.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelUpdate {
    /// `true` detaches the channel: you stay in it and it is logged, but its lines
    /// are not sent to your clients until it is attached again (`false`, a JOIN from
    /// a client, or a line that `reattach_on` matches).
    pub detached: Option<bool>,
    /// What attaches a detached channel by itself: `message`, `highlight` (a line
    /// that mentions your nick; the default) or `none`.
    pub reattach_on: Option<ReattachOn>,
}

/// Detaches or attaches one of the user's channels, or sets what attaches it by
/// itself; the running session tells the user's clients at once.
///
/// # Errors
/// `Invalid`, `NotFound` (no such network, or not in that channel), `Store`.
pub async fn update_channel(
    services: &Services,
    user: &User,
    network_name: &str,
    channel: &str,
    change: &ChannelUpdate,
) -> Result<(), AccountError> {
    check_channel(channel, None)?;
    let net = network(services, user, network_name).await?;
    let not_in = || AccountError::NotFound(format!("{:?} is not in {channel}", net.name));
    if let Some(h) = services.users.get(user.id) {
        return match h
            .set_detached(
                net.id,
                channel.as_bytes(),
                change.detached,
                change.reattach_on,
            )
            .await?
        {
            Ok(()) => Ok(()),
            Err(DetachError::NotInChannel(_)) => Err(not_in()),
            Err(DetachError::NoSuchNetwork) => Err(AccountError::Unavailable),
            Err(DetachError::Store(e)) => {
                tracing::error!(user = %user.name, error = %e, "saving a channel's detached flag");
                Err(AccountError::Unavailable)
            }
        };
    }
    // Nobody runs the user: the store only (rfc1459, as for a channel saved offline).
    let folded = Casemapping::Rfc1459.fold(channel.as_bytes());
    let buffer = services
        .store
        .buffers(net.id)
        .await?
        .into_iter()
        .find(|b| b.key == folded && b.joined)
        .ok_or_else(not_in)?;
    let detached = change.detached.unwrap_or(buffer.detached);
    services
        .store
        .set_detached(net.id, &folded, detached, change.reattach_on)
        .await?;
    Ok(())
}

/// A user's auto-away settings, as every door shows them.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct AwayView {
    /// Whether Ferry marks you away on every network while none of your clients is
    /// attached (and back when one attaches). Your own AWAY from a client is left alone.
    pub auto_away: bool,
    /// Your own away text; `null`: the server's default.
    pub away_message: Option<String>,
    /// The server's default away text.
    pub default_away_message: String,
}

/// Changes to the auto-away settings: what is absent stays.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AwayChange {
    pub auto_away: Option<bool>,
    /// Your own away text; `null` or empty: back to the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub away_message: Option<Option<String>>,
}

/// Longest away text a user may set: networks cut theirs at about 200-300 bytes.
const MAX_AWAY_LEN: usize = 300;

fn away_view(services: &Services, s: &crate::store::AwaySettings) -> AwayView {
    AwayView {
        auto_away: s.auto_away,
        away_message: s.away_message.clone(),
        default_away_message: services.users.config().away_message.clone(),
    }
}

/// The user's auto-away settings.
///
/// # Errors
/// `Store`.
pub async fn away_settings(services: &Services, user: &User) -> Result<AwayView, AccountError> {
    let s = services.store.away_settings(user.id).await?;
    Ok(away_view(services, &s))
}

/// Changes the user's auto-away settings; a running session follows at once (a user
/// who is away now is marked back, or away with the new text).
///
/// # Errors
/// `Invalid` (a text with control characters or too long), `Store`.
pub async fn update_away(
    services: &Services,
    user: &User,
    change: &AwayChange,
) -> Result<AwayView, AccountError> {
    let mut s = services.store.away_settings(user.id).await?;
    if let Some(on) = change.auto_away {
        s.auto_away = on;
    }
    if let Some(text) = &change.away_message {
        let text = text.as_deref().map(str::trim).filter(|t| !t.is_empty());
        if let Some(t) = text {
            if t.chars().any(char::is_control) {
                return Err(invalid(
                    "away_message: no control characters or line breaks",
                ));
            }
            if t.len() > MAX_AWAY_LEN {
                return Err(invalid(format!(
                    "away_message: at most {MAX_AWAY_LEN} bytes"
                )));
            }
        }
        s.away_message = text.map(str::to_owned);
    }
    services.store.set_away_settings(user.id, &s).await?;
    if let Some(h) = services.users.get(user.id) {
        h.set_away_settings(s.clone()).await?;
    }
    tracing::info!(user = %user.name, auto_away = s.auto_away, "away settings changed by their user");
    Ok(away_view(services, &s))
}

/// Changes the user's password. The current one is checked through the login guard
/// (its budgets per address and account); the new one must meet `[auth]
/// min_password_len` and is hashed on the guard's bounded pool. Every other login
/// session of the user ends (`keep`: the token hash of the one that asked, if any) and
/// all the user's websockets on this node close. Returns how many closed.
///
/// # Errors
/// `Invalid` (too short), `WrongPassword`, `Refused`, `Store`.
pub async fn change_password(
    services: &Services,
    user: &User,
    from: IpAddr,
    current: &str,
    new: &str,
    keep: Option<&[u8; 32]>,
) -> Result<usize, AccountError> {
    let min = services.guard.settings().min_password_len;
    crate::auth::check_new_password(new, min).map_err(AccountError::Invalid)?;
    let attempt = services
        .guard
        .admit(Door::PasswordChange, from, &user.name)
        .map_err(AccountError::Refused)?;
    let stored = services.store.user(user.id).await?;
    let hash = stored.as_ref().map(|u| u.password_hash.clone());
    if !attempt
        .verify(hash, current)
        .await
        .map_err(AccountError::Refused)?
    {
        return Err(AccountError::WrongPassword);
    }
    let hash = services
        .guard
        .hasher
        .hash(new.to_owned())
        .await
        .map_err(|busy| AccountError::Refused(busy.into()))?;
    services.store.set_password(user.id, &hash).await?;
    services.store.delete_user_sessions(user.id, keep).await?;
    let closed = services
        .sockets
        .control(user.id, Control::End("your password changed".into()));
    tracing::info!(user = %user.name, addr = %from, websockets = closed, "password changed");
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NewNetworkSpec {
        NewNetworkSpec {
            name: "libera".into(),
            addr: "irc.libera.chat:6697".into(),
            tls: true,
            nick: "alice".into(),
            sasl: Some(SaslPlain {
                account: "alice".into(),
                password: "pa:ss".into(),
            }),
            channels: vec![
                ChannelSpec {
                    name: "#ferry".into(),
                    key: None,
                },
                ChannelSpec {
                    name: "#secret".into(),
                    key: Some("k".into()),
                },
            ],
            ..NewNetworkSpec::default()
        }
    }

    #[test]
    fn user_specs_validate_like_admin_ones() {
        let n = spec().to_spec().unwrap().check().unwrap();
        assert_eq!(n.channels.len(), 2);
        assert_eq!(n.channels[1].2.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            n.sasl,
            Some(Sasl::Plain {
                username: "alice".into(),
                password: "pa:ss".into()
            })
        );
        let bad_channel = |name: &str, key: Option<&str>| NewNetworkSpec {
            channels: vec![ChannelSpec {
                name: name.into(),
                key: key.map(Into::into),
            }],
            ..spec()
        };
        for bad in [
            bad_channel("nochan", None),
            bad_channel("#a,#b", None),
            bad_channel("#a b", None),
            bad_channel("#a", Some("k k")),
            NewNetworkSpec {
                sasl: Some(SaslPlain {
                    account: "a:b".into(),
                    password: "x".into(),
                }),
                ..spec()
            },
            NewNetworkSpec {
                addr: "nohost".into(),
                ..spec()
            },
        ] {
            assert!(
                bad.to_spec().and_then(|s| Ok(s.check()?)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn allow_list_patterns() {
        let s = AccountSettings {
            max_networks_per_user: 1,
            allowed_servers: vec!["irc.libera.chat:6697".into(), "*.oftc.net:*".into()],
            ..AccountSettings::default()
        };
        assert!(check_server(&s, "irc.libera.chat:6697").is_ok());
        assert!(check_server(&s, "IRC.Libera.Chat:6697").is_ok());
        assert!(check_server(&s, "irc.oftc.net:6667").is_ok());
        for refused in ["irc.libera.chat:6667", "evil.chat:6697", "oftc.net.evil:1"] {
            let e = check_server(&s, refused).unwrap_err();
            assert_eq!(e.code(), "server_not_allowed", "{refused}");
        }
        assert!(check_server(&AccountSettings::default(), "any.where:1").is_ok());
    }

    #[test]
    fn changes_tell_absent_from_null() {
        let c: NetworkChange = serde_json::from_str(r#"{"sasl": null}"#).unwrap();
        assert!(matches!(c.sasl, Some(None)));
        let c: NetworkChange = serde_json::from_str(r#"{"nick": "bob"}"#).unwrap();
        assert!(c.sasl.is_none());
        assert!(serde_json::from_str::<NetworkChange>(r#"{"name": "x"}"#).is_err());
    }
}
