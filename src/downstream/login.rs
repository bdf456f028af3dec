//! Login: runs registration (`CAP`, `PASS`, `NICK`, `USER`, SASL PLAIN) on a
//! client socket and checks credentials against the store, before a client is
//! attached to a user's network.
//!
//! The decisions are made by the I/O-free state machine in `registration`; this
//! file is its driver (reads, writes, the failure delay, the registration
//! deadline) and the store check, through the node's login guard (budgets per address
//! and account, the bounded hashing pool, the failed-login log). Wrong passwords and
//! unknown users get the same answer after the same delay; a throttled or busy
//! attempt is a temporary failure.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::caps::Caps;
use super::io::{Reader, WriteError, Writer};
use super::registration::{Account, CloseReason, Credentials, LoginError, Next, Out, Registration};
use crate::auth::{Door, LoginGuard};
use crate::config::DownstreamConfig;
use crate::irc::Message;
use crate::services::Services;
use crate::store::{Network, Store, User};
use crate::user::UserHandle;

/// What a login that needs the store hears while the store is away (the same words
/// as the HTTP API's `store_unreachable`).
pub const STORE_AWAY: &str = "the store is unreachable, try again shortly";

/// A verified login.
pub struct Verified {
    pub user: User,
    /// The network the client is bound to; `None`: a `soju.im/bouncer-networks`
    /// connection bound to none (it speaks `BOUNCER` and to `BouncerServ` only).
    pub network: Option<Network>,
    pub client_name: String,
    /// The credentials as given, kept to log in again on the owner node when this
    /// node proxies the client there.
    pub creds: Credentials,
}

/// Checks credentials against the store through the login guard, as coming from
/// `addr` through `door`. With `unbound_ok` (a `soju.im/bouncer-networks` client),
/// credentials that name no network log in bound to none, as soju does (the client
/// binds with `BOUNCER BIND`, or manages networks on this connection), however many
/// networks the user has.
pub async fn verify(
    store: &Store,
    guard: &LoginGuard,
    door: Door,
    addr: IpAddr,
    creds: &Credentials,
    unbound_ok: bool,
) -> Result<Verified, LoginError> {
    let attempt = guard
        .admit(door, addr, &creds.user)
        .map_err(|r| LoginError::Temporary(r.to_string()))?;
    // No account name holds a control character: such a name never reaches the
    // store, and fails like an unknown user (the same check, delay and log line,
    // escaped).
    let controls = |s: &str| s.chars().any(char::is_control);
    let plain = !(controls(&creds.user)
        || creds.client.as_deref().is_some_and(controls)
        || creds.network.as_deref().is_some_and(controls));
    let temp = |e: crate::store::StoreError| {
        // Logged here; the client hears only that it may retry.
        tracing::error!(error = %e, "IRC login: the store failed");
        if e.is_permanent() {
            LoginError::Temporary("the server could not check your login".into())
        } else {
            LoginError::Temporary(STORE_AWAY.into())
        }
    };
    let user = if plain {
        store.user_by_name(&creds.user).await.map_err(temp)?
    } else {
        None
    };
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let ok = attempt
        .verify(hash, &creds.password)
        .await
        .map_err(|r| LoginError::Temporary(r.to_string()))?;
    let user = match (user, ok) {
        (Some(u), true) => u,
        _ => return Err(LoginError::Invalid),
    };
    let network = match &creds.network {
        None if unbound_ok => None,
        Some(name) => store.network_by_name(user.id, name).await.map_err(temp)?,
        None => {
            let mut all = store.networks(user.id).await.map_err(temp)?;
            if all.len() == 1 {
                all.pop()
            } else {
                None
            }
        }
    };
    if network.is_none() && unbound_ok && creds.network.is_none() {
        return Ok(Verified {
            user,
            network: None,
            client_name: creds.client.clone().unwrap_or_else(|| "default".into()),
            creds: creds.clone(),
        });
    }
    let Some(network) = network else {
        let networks = store.networks(user.id).await.map_err(temp)?;
        return Err(LoginError::UnknownNetwork {
            networks: networks.into_iter().map(|n| n.name).collect(),
        });
    };
    Ok(Verified {
        user,
        network: Some(network),
        client_name: creds.client.clone().unwrap_or_else(|| "default".into()),
        creds: creds.clone(),
    })
}

/// A client that completed registration.
pub struct Registered {
    pub verified: Verified,
    /// The user's actor when this node runs it; `None` when another node owns the
    /// user (the connection is proxied there).
    pub handle: Option<UserHandle>,
    /// The nick the client asked for (it may differ from ours upstream).
    pub nick: Bytes,
    pub caps: Caps,
}

impl Account for Verified {
    fn account(&self) -> &str {
        &self.user.name
    }
}

/// Runs registration until the client is logged in and attached-ready, or
/// returns the reason to close with (after sending any numeric reply).
///
/// A thin driver around [`Registration`], which makes every decision: this
/// function only reads lines (until the registration deadline or shutdown),
/// checks credentials against the store, writes what the state machine says and
/// waits the failure delay where it says so.
pub async fn register(
    reader: &mut Reader,
    writer: &mut Writer,
    peer: IpAddr,
    services: &Services,
    cfg: &DownstreamConfig,
    shutdown: &CancellationToken,
) -> Result<Registered, CloseReason> {
    let deadline = Instant::now() + cfg.registration_timeout;
    let mut reg = Registration::<Verified>::new(&cfg.server_name);
    let mut next = Next::Read;
    let done = loop {
        let step = match next {
            Next::Read => {
                let msg = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return Err("registration timed out".into()),
                    _ = shutdown.cancelled() => return Err("server shutting down".into()),
                    m = reader.next() => match m {
                        Some(m) => m,
                        None => return Err("connection closed".into()),
                    },
                };
                reg.line(&msg)
            }
            Next::Verify(creds) => {
                let door = if reg.checking_sasl() {
                    Door::IrcSasl
                } else {
                    Door::IrcPass
                };
                let unbound_ok = reg.bouncer();
                let result = if services.lease.riding_out() {
                    // The store is away: say so at once instead of waiting for it.
                    Err(LoginError::Temporary(STORE_AWAY.into()))
                } else {
                    verify(
                        &services.store,
                        &services.guard,
                        door,
                        peer,
                        &creds,
                        unbound_ok,
                    )
                    .await
                };
                reg.checked(result)
            }
            Next::Close(reason) => return Err(reason),
            Next::Done(done) => break done,
        };
        let sent = perform(writer, &step.out, cfg.login_failure_delay).await;
        match step.next {
            // The connection is going away: its last lines are sent best effort.
            Next::Close(reason) => return Err(reason),
            n => {
                sent.map_err(|e| e.to_string())?;
                next = n;
            }
        }
    };
    let mut done = done;
    if let Some(netid) = done.bind.take() {
        bind(
            &mut done.verified,
            &netid,
            services,
            writer,
            &cfg.server_name,
        )
        .await?;
    }
    let handle = services.users.get(done.verified.user.id);
    if !services.has_fd_room() {
        let text = format!(
            "Closing link (this Ferry node ({}) is at its file descriptor budget of {}; try again later or another node)",
            services.node.id, services.node.fd.limit
        );
        let _ = writer.send(&Message::new("ERROR", [text])).await;
        return Err("node at its file descriptor budget".into());
    }
    Ok(Registered {
        verified: done.verified,
        handle,
        nick: done.nick,
        caps: done.caps,
    })
}

/// Binds a logged-in client to the network `netid` (`BOUNCER BIND`): one of the
/// user's, by its store id; else `FAIL BOUNCER INVALID_NETID` and the connection closes.
async fn bind(
    verified: &mut Verified,
    netid: &str,
    services: &Services,
    writer: &mut Writer,
    server: &str,
) -> Result<(), CloseReason> {
    let found = match netid.parse::<crate::store::NetworkId>() {
        Ok(id) => services.store.network(id).await.map_err(|e| {
            tracing::error!(error = %e, "IRC login: the store failed");
            "temporary failure, try again later: the server could not check your login".to_owned()
        })?,
        Err(_) => None,
    };
    match found.filter(|n| n.user_id == verified.user.id) {
        Some(n) => {
            verified.creds.network = Some(n.name.clone());
            verified.network = Some(n);
            Ok(())
        }
        None => {
            let shown = if crate::irc::is_word(netid.as_bytes()) {
                netid
            } else {
                "*"
            };
            let fail = Message::new(
                "FAIL",
                [
                    "BOUNCER".to_owned(),
                    "INVALID_NETID".to_owned(),
                    "BIND".to_owned(),
                    shown.to_owned(),
                    "Network not found".to_owned(),
                ],
            )
            .with_prefix(server.to_owned());
            let _ = writer.send(&fail).await;
            Err(format!("no network with id {shown}"))
        }
    }
}

/// Writes one step's lines, waiting `delay` where it asks for the failure delay.
async fn perform(writer: &mut Writer, out: &[Out], delay: Duration) -> Result<(), WriteError> {
    for o in out {
        match o {
            Out::Send(m) => writer.feed(m).await?,
            Out::FailureDelay => {
                writer.flush().await?;
                tokio::time::sleep(delay).await;
            }
        }
    }
    writer.flush().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn dummy_hash_is_valid() {
        let dummy = crate::auth::DUMMY_HASH;
        assert!(argon2::PasswordHash::new(dummy).is_ok());
        assert!(!crate::auth::verify_password(dummy, ""));
    }
}
