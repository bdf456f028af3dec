//! Registration: `CAP`, `PASS`, `NICK`, `USER` and SASL PLAIN before a client
//! is attached to a user's network.
//!
//! Credentials name the user, optionally the client (for its own backlog
//! position) and the network: `user[@client][/network]:password` in `PASS`,
//! `user[@client][/network]` as SASL PLAIN authcid. Wrong passwords and
//! unknown users get the same answer after the same delay.

use base64::Engine;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::caps::{self, CapEffect, Caps};
use super::error::ProtoError;
use super::io::{Reader, WriteError, Writer};
use crate::config::DownstreamConfig;
use crate::irc::{numeric, Message};
use crate::services::Services;
use crate::store::{Network, Store, User};
use crate::user::UserHandle;

/// What a client claims to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub client: Option<String>,
    pub network: Option<String>,
    pub password: String,
}

/// Parses `user[@client][/network]:password`. The password is everything
/// after the first `:` and may itself hold `:` and `/`.
pub fn parse_pass(pass: &str) -> Option<Credentials> {
    let (ident, password) = pass.split_once(':')?;
    parse_ident(ident, password)
}

/// Parses `user[@client][/network]` (a SASL authcid) with its password.
pub fn parse_ident(ident: &str, password: &str) -> Option<Credentials> {
    let (userpart, network) = match ident.split_once('/') {
        Some((u, n)) => (u, Some(n)),
        None => (ident, None),
    };
    let (user, client) = match userpart.split_once('@') {
        Some((u, c)) => (u, Some(c)),
        None => (userpart, None),
    };
    let nonempty = |s: &str| !s.is_empty();
    if !nonempty(user)
        || client.is_some_and(|c| !nonempty(c))
        || network.is_some_and(|n| !nonempty(n))
    {
        return None;
    }
    Some(Credentials {
        user: user.to_owned(),
        client: client.map(str::to_owned),
        network: network.map(str::to_owned),
        password: password.to_owned(),
    })
}

/// Parses a decoded SASL PLAIN message `authzid NUL authcid NUL password`.
/// An empty authcid falls back to the authzid.
pub fn parse_sasl_plain(data: &[u8]) -> Option<Credentials> {
    let mut parts = data.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    let ident = if authcid.is_empty() { authzid } else { authcid };
    parse_ident(ident, password)
}

/// Why credentials were refused.
#[derive(Debug)]
pub enum LoginError {
    /// Unknown user or wrong password: the client must not learn which.
    Invalid,
    /// The user exists and the password is right, but the network does not
    /// name one of theirs (or none was given and they have several).
    UnknownNetwork { networks: Vec<String> },
    /// Something on our side failed; the client may retry later.
    Temporary(String),
}

impl LoginError {
    fn close_reason(&self) -> String {
        match self {
            LoginError::Invalid => "invalid credentials".into(),
            LoginError::UnknownNetwork { networks } if networks.is_empty() => {
                "unknown network; you have no networks configured".into()
            }
            LoginError::UnknownNetwork { networks } => format!(
                "unknown network; log in as user/network with one of: {}",
                networks.join(", ")
            ),
            LoginError::Temporary(e) => format!("temporary failure, try again later: {e}"),
        }
    }
}

/// A verified login.
pub struct Verified {
    pub user: User,
    pub network: Network,
    pub client_name: String,
    /// The credentials as given, kept to log in again on the owner node when this
    /// node proxies the client there.
    pub creds: Credentials,
}

/// Checks credentials against the store.
pub async fn verify(store: &Store, creds: &Credentials) -> Result<Verified, LoginError> {
    let user = store
        .user_by_name(&creds.user)
        .await
        .map_err(|e| LoginError::Temporary(e.to_string()))?;
    // Verify against a dummy hash for unknown users, so both cost the same.
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_owned());
    let password = creds.password.clone();
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let user = match (user, ok) {
        (Some(u), true) => u,
        _ => return Err(LoginError::Invalid),
    };
    let temp = |e: crate::store::StoreError| LoginError::Temporary(e.to_string());
    let network = match &creds.network {
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
    let Some(network) = network else {
        let networks = store.networks(user.id).await.map_err(temp)?;
        return Err(LoginError::UnknownNetwork {
            networks: networks.into_iter().map(|n| n.name).collect(),
        });
    };
    Ok(Verified {
        user,
        network,
        client_name: creds.client.clone().unwrap_or_else(|| "default".into()),
        creds: creds.clone(),
    })
}

/// An argon2 hash of a random password nobody knows.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0l2JbVGUpHDH6d1eIGZ0gBIcbdBXnYGeD0wk7jVO9Ic";

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

/// Why registration ended without a login: the `ERROR` text to close with.
pub type CloseReason = String;

#[derive(Default)]
struct State {
    nick: Option<Bytes>,
    user_given: bool,
    cap_negotiating: bool,
    caps: Caps,
    pass: Option<Credentials>,
    /// `Some` while an `AUTHENTICATE PLAIN` exchange is collecting data.
    sasl_buf: Option<Vec<u8>>,
    sasl_done: Option<Verified>,
}

impl State {
    fn nick_str(&self) -> String {
        self.nick.as_ref().map_or_else(
            || "*".to_owned(),
            |n| String::from_utf8_lossy(n).into_owned(),
        )
    }
}

/// Runs registration until the client is logged in and attached-ready, or
/// returns the reason to close with (after sending any numeric reply).
pub async fn register(
    reader: &mut Reader,
    writer: &mut Writer,
    services: &Services,
    cfg: &DownstreamConfig,
    shutdown: &CancellationToken,
) -> Result<Registered, CloseReason> {
    let deadline = Instant::now() + cfg.registration_timeout;
    let mut st = State::default();
    let server = cfg.server_name.as_str();
    let io = |e: WriteError| e.to_string();
    loop {
        let msg = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err("registration timed out".into()),
            _ = shutdown.cancelled() => return Err("server shutting down".into()),
            m = reader.next() => match m {
                Some(m) => m,
                None => return Err("connection closed".into()),
            },
        };
        let nick = st.nick_str();
        match msg.command.as_str() {
            "CAP" => {
                let (out, effect) = caps::handle(&msg, &mut st.caps, server, &nick);
                match effect {
                    CapEffect::Started => st.cap_negotiating = true,
                    CapEffect::Ended => st.cap_negotiating = false,
                    CapEffect::None => {}
                }
                writer.send_all(&out).await.map_err(io)?;
            }
            "PASS" => match msg.param_str(0) {
                Some(p) => {
                    st.pass = Some(parse_pass(&p).unwrap_or(Credentials {
                        user: String::new(),
                        client: None,
                        network: None,
                        password: String::new(),
                    }))
                }
                None => writer
                    .send(&ProtoError::NeedMoreParams("PASS".into()).to_message(server, &nick))
                    .await
                    .map_err(io)?,
            },
            "NICK" => match msg.param(0).filter(|n| !n.is_empty()) {
                Some(_) => st.nick = msg.params.first().cloned(),
                None => writer
                    .send(
                        &Message::new(
                            numeric::ERR_NONICKNAMEGIVEN,
                            [nick.clone(), "No nickname given".to_owned()],
                        )
                        .with_prefix(server.to_owned()),
                    )
                    .await
                    .map_err(io)?,
            },
            "USER" => {
                if msg.params.len() < 4 {
                    writer
                        .send(&ProtoError::NeedMoreParams("USER".into()).to_message(server, &nick))
                        .await
                        .map_err(io)?;
                } else {
                    st.user_given = true;
                }
            }
            "AUTHENTICATE" => authenticate(&msg, &mut st, writer, &services.store, cfg)
                .await
                .map_err(io)?,
            "PING" => {
                let token = msg.params.first().cloned().unwrap_or_default();
                let pong = Message::new("PONG", [Bytes::from(server.to_owned()), token])
                    .with_prefix(server.to_owned());
                writer.send(&pong).await.map_err(io)?;
            }
            "QUIT" => return Err("quit".into()),
            _ => writer
                .send(&ProtoError::NotRegistered.to_message(server, &nick))
                .await
                .map_err(io)?,
        }
        if st.nick.is_none() || !st.user_given || st.cap_negotiating || st.sasl_buf.is_some() {
            continue;
        }
        let nick = st.nick_str();
        let verified = match st.sasl_done.take() {
            Some(v) => v,
            None => {
                let result = match &st.pass {
                    Some(creds) if !creds.user.is_empty() => verify(&services.store, creds).await,
                    _ => Err(LoginError::Invalid),
                };
                match result {
                    Ok(v) => v,
                    Err(e) => {
                        if matches!(e, LoginError::Invalid) {
                            tokio::time::sleep(cfg.login_failure_delay).await;
                            let _ = writer
                                .send(&ProtoError::PasswdMismatch.to_message(server, &nick))
                                .await;
                        }
                        return Err(e.close_reason());
                    }
                }
            }
        };
        let handle = services.users.get(verified.user.id);
        if !services.has_fd_room() {
            let text = format!(
                "Closing link (this Ferry node ({}) is at its file descriptor budget of {}; try again later or another node)",
                services.node.id, services.node.fd.limit
            );
            let _ = writer.send(&Message::new("ERROR", [text])).await;
            return Err("node at its file descriptor budget".into());
        }
        return Ok(Registered {
            verified,
            handle,
            nick: st.nick.take().unwrap_or_default(),
            caps: st.caps,
        });
    }
}

/// Handles one `AUTHENTICATE` step (SASL PLAIN only).
async fn authenticate(
    msg: &Message,
    st: &mut State,
    writer: &mut Writer,
    store: &Store,
    cfg: &DownstreamConfig,
) -> Result<(), WriteError> {
    let server = cfg.server_name.as_str();
    let nick = st.nick_str();
    let reply = |e: ProtoError| e.to_message(server, &nick);
    let Some(arg) = msg.param_str(0).map(|a| a.into_owned()) else {
        return writer
            .send(&reply(ProtoError::NeedMoreParams("AUTHENTICATE".into())))
            .await;
    };
    if arg == "*" {
        st.sasl_buf = None;
        return writer.send(&reply(ProtoError::SaslAborted)).await;
    }
    let Some(buf) = st.sasl_buf.as_mut() else {
        if st.sasl_done.is_some() {
            return writer
                .send(
                    &Message::new(
                        numeric::ERR_SASLALREADY,
                        [nick.clone(), "You have already authenticated".to_owned()],
                    )
                    .with_prefix(server.to_owned()),
                )
                .await;
        }
        if arg.eq_ignore_ascii_case("PLAIN") {
            st.sasl_buf = Some(Vec::new());
            return writer.send(&Message::new("AUTHENTICATE", ["+"])).await;
        }
        writer.feed(&reply(ProtoError::SaslMechs)).await?;
        return writer.send(&reply(ProtoError::SaslFail)).await;
    };
    if arg != "+" {
        buf.extend_from_slice(arg.as_bytes());
    }
    if buf.len() > 4096 {
        st.sasl_buf = None;
        return writer.send(&reply(ProtoError::SaslTooLong)).await;
    }
    // A 400-byte chunk means more follows.
    if arg.len() == 400 {
        return Ok(());
    }
    let data = st.sasl_buf.take().unwrap_or_default();
    let creds = base64::engine::general_purpose::STANDARD
        .decode(&data)
        .ok()
        .and_then(|d| parse_sasl_plain(&d));
    let result = match &creds {
        Some(c) => verify(store, c).await,
        None => Err(LoginError::Invalid),
    };
    match result {
        Ok(v) => {
            let account = v.user.name.clone();
            let mask = format!("{nick}!{nick}@{server}");
            writer
                .feed(
                    &Message::new(
                        numeric::RPL_LOGGEDIN,
                        [
                            nick.clone(),
                            mask,
                            account.clone(),
                            format!("You are now logged in as {account}"),
                        ],
                    )
                    .with_prefix(server.to_owned()),
                )
                .await?;
            st.sasl_done = Some(v);
            writer
                .send(
                    &Message::new(
                        numeric::RPL_SASLSUCCESS,
                        [nick.clone(), "SASL authentication successful".to_owned()],
                    )
                    .with_prefix(server.to_owned()),
                )
                .await
        }
        Err(LoginError::Invalid) => {
            tokio::time::sleep(cfg.login_failure_delay).await;
            writer.send(&reply(ProtoError::SaslFail)).await
        }
        Err(e) => {
            let text = e.close_reason();
            writer
                .feed(&Message::new("NOTICE", [nick.clone(), text]).with_prefix(server.to_owned()))
                .await?;
            writer.send(&reply(ProtoError::SaslFail)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, client: Option<&str>, network: Option<&str>, pw: &str) -> Credentials {
        Credentials {
            user: user.into(),
            client: client.map(Into::into),
            network: network.map(Into::into),
            password: pw.into(),
        }
    }

    #[test]
    fn pass_forms() {
        assert_eq!(
            parse_pass("alice/libera:pw"),
            Some(creds("alice", None, Some("libera"), "pw"))
        );
        assert_eq!(
            parse_pass("alice@laptop/libera:p:a/ss:"),
            Some(creds("alice", Some("laptop"), Some("libera"), "p:a/ss:"))
        );
        assert_eq!(
            parse_pass("alice:pw/x"),
            Some(creds("alice", None, None, "pw/x"))
        );
        assert_eq!(
            parse_pass("alice@phone:pw"),
            Some(creds("alice", Some("phone"), None, "pw"))
        );
        assert_eq!(
            parse_pass("alice/libera:"),
            Some(creds("alice", None, Some("libera"), ""))
        );
        assert_eq!(parse_pass("nocolon"), None);
        assert_eq!(parse_pass(":pw"), None);
        assert_eq!(parse_pass("alice/:pw"), None);
        assert_eq!(parse_pass("alice@/net:pw"), None);
    }

    #[test]
    fn sasl_plain_forms() {
        assert_eq!(
            parse_sasl_plain(b"\0alice@laptop/libera\0p:w/d"),
            Some(creds("alice", Some("laptop"), Some("libera"), "p:w/d"))
        );
        assert_eq!(
            parse_sasl_plain(b"alice/net\0\0pw"),
            Some(creds("alice", None, Some("net"), "pw"))
        );
        assert_eq!(parse_sasl_plain(b"\0alice/net"), None);
        assert_eq!(parse_sasl_plain(b"\0alice\0pw\0extra"), None);
    }

    #[test]
    fn dummy_hash_is_valid() {
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!crate::auth::verify_password(DUMMY_HASH, ""));
    }
}
