//! A user's channels: join and part (sent to the server or saved for the next
//! connection), detach and attach.

use serde::Deserialize;
use utoipa::ToSchema;

use super::network::{connected, network, restart};
use super::spec::check_channel;
use super::{bytes, AccountError, ACCOUNT_CLIENT};
use crate::irc::{Casemapping, Message};
use crate::services::Services;
use crate::store::{Network, ReattachOn, User};
use crate::user::DetachError;

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
