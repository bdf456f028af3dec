//! Invite links: how a person gets an account on a hosted Ferry without the operator
//! choosing their password. `ferry user invite` (through the admin API, or on the
//! store when no node runs) makes a one-time token and prints
//! `<public HTTP URL>/#invite=<token>`; the web client sees the fragment (which no
//! server log records), asks `GET /api/invites/{token}` whether it is still good, and
//! `POST /api/invites/{token}` with a name and password creates the account and logs
//! in.
//!
//! - Off unless the operator says so (`[accounts] invites = true`): creating or using
//!   an invite is refused with [`InviteError::Disabled`].
//! - Tokens are 32 bytes from the operating system's CSPRNG, hex-encoded; the store
//!   keeps their SHA-256 (`store::invites`), with the expiry and when it was used.
//! - One use: the store marks the invite used and creates the user in one transaction
//!   (two racing sign-ups: exactly one wins). A taken name leaves the invite usable.
//! - The same rules as `ferry user add` (`admin::check_user_name`,
//!   `admin::check_password` with `[auth] min_password_len`, the bounded hashing pool).
//! - Every check of a token goes through the login guard (`Door::Invite`): unknown,
//!   used or expired tokens count as failed logins for the address, so guessing is
//!   throttled like password guessing.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::admin::{self, AdminError};
use crate::auth::{Door, LoginGuard, Refused};
use crate::config::AccountSettings;
use crate::store::{Store, StoreError, User};

/// How long an invite lasts unless `--expires` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The longest an invite may last.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The account name the login guard counts invite failures under.
const GUARD_ACCOUNT: &str = "(invite)";

/// Why an invite could not be made, checked or used. Each kind has a stable
/// [`code`](Self::code), the HTTP API's `error.code`.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// `[accounts] invites` is off.
    #[error("invites are disabled on this server (the operator can enable them with `[accounts] invites = true`)")]
    Disabled,
    /// Unknown, used or expired.
    #[error("this invite link is not valid: it is unknown, already used or expired")]
    NotValid,
    /// A name or password that `ferry user add` would refuse too, or a bad expiry.
    #[error("{0}")]
    Invalid(String),
    /// The name is taken; the invite is still usable.
    #[error("the name {0:?} is taken; choose another")]
    NameTaken(String),
    /// Too many failures from this address, or the hashing pool is full.
    #[error(transparent)]
    Refused(Refused),
    #[error(transparent)]
    Store(StoreError),
}

impl InviteError {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            InviteError::Disabled => "invites_disabled",
            InviteError::NotValid => "invite_invalid",
            InviteError::Invalid(_) => "bad_request",
            InviteError::NameTaken(_) => "conflict",
            InviteError::Refused(Refused::Throttled { .. }) => "rate_limited",
            InviteError::Refused(Refused::Busy) => "unavailable",
            InviteError::Store(_) => "internal",
        }
    }
}

impl From<StoreError> for InviteError {
    fn from(e: StoreError) -> InviteError {
        InviteError::Store(e)
    }
}

impl From<AdminError> for InviteError {
    fn from(e: AdminError) -> InviteError {
        match e {
            AdminError::Invalid(m) => InviteError::Invalid(m),
            AdminError::Store(e) => InviteError::Store(e),
            AdminError::Busy(_) => InviteError::Refused(Refused::Busy),
        }
    }
}

/// A new invite: the token (shown once, never stored) and its terms.
#[derive(Clone, Debug)]
pub struct NewInvite {
    pub token: String,
    pub admin: bool,
    pub expires_at: DateTime<Utc>,
}

impl NewInvite {
    /// The sign-up URL on the web client at `base` (the node's public HTTP URL).
    pub fn url(&self, base: &str) -> String {
        format!("{}/#invite={}", base.trim_end_matches('/'), self.token)
    }
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` looks like one of ours (64 lowercase hex digits); anything else is
/// not looked up.
fn well_formed(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes an invite valid for `ttl`.
///
/// # Errors
/// `Disabled`, `Invalid` (a `ttl` of zero or over [`MAX_TTL`]), `Store`.
pub async fn create(
    store: &Store,
    settings: &AccountSettings,
    admin: bool,
    ttl: Duration,
) -> Result<NewInvite, InviteError> {
    if !settings.invites {
        return Err(InviteError::Disabled);
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(InviteError::Invalid(format!(
            "an invite lasts between 1 s and {} days",
            MAX_TTL.as_secs() / 86_400
        )));
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let now = Utc::now();
    let expires_at = now + chrono::Duration::from_std(ttl).expect("bounded by MAX_TTL");
    store
        .create_invite(&token_hash(&token), admin, now, expires_at)
        .await?;
    if let Err(e) = store.delete_expired_invites(now).await {
        tracing::warn!(error = %e, "could not delete expired invites");
    }
    tracing::info!(admin, expires_at = %expires_at, "invite created");
    Ok(NewInvite {
        token,
        admin,
        expires_at,
    })
}

/// What a valid invite offers, for the sign-up page.
#[derive(Clone, Debug)]
pub struct Offer {
    pub admin: bool,
    pub expires_at: DateTime<Utc>,
}

/// Whether `token` can still be used, checked through the login guard.
///
/// # Errors
/// `Disabled`, `NotValid`, `Refused` (throttled), `Store`.
pub async fn check(
    store: &Store,
    settings: &AccountSettings,
    guard: &LoginGuard,
    from: IpAddr,
    token: &str,
) -> Result<Offer, InviteError> {
    if !settings.invites {
        return Err(InviteError::Disabled);
    }
    let attempt = guard
        .admit(Door::Invite, from, GUARD_ACCOUNT)
        .map_err(InviteError::Refused)?;
    let invite = if well_formed(token) {
        store.invite(&token_hash(token)).await?
    } else {
        None
    };
    match invite.filter(|i| i.usable(Utc::now())) {
        Some(i) => {
            attempt.record(true);
            Ok(Offer {
                admin: i.admin,
                expires_at: i.expires_at,
            })
        }
        None => {
            attempt.record(false);
            Err(InviteError::NotValid)
        }
    }
}

/// Uses `token` to create the account `name` with `password` (the rules of `ferry
/// user add`), through the login guard.
///
/// # Errors
/// `Disabled`, `Invalid` (name, password), `NotValid` (unknown, used — also by a
/// racing sign-up — or expired), `NameTaken`, `Refused`, `Store`.
pub async fn sign_up(
    store: &Store,
    settings: &AccountSettings,
    guard: &LoginGuard,
    from: IpAddr,
    token: &str,
    name: &str,
    password: &str,
) -> Result<User, InviteError> {
    if !settings.invites {
        return Err(InviteError::Disabled);
    }
    admin::check_user_name(name)?;
    admin::check_password(password, guard.settings().min_password_len)?;
    let attempt = guard
        .admit(Door::Invite, from, GUARD_ACCOUNT)
        .map_err(InviteError::Refused)?;
    let hash = token_hash(token);
    let usable = well_formed(token)
        && store
            .invite(&hash)
            .await?
            .is_some_and(|i| i.usable(Utc::now()));
    if !usable {
        attempt.record(false);
        return Err(InviteError::NotValid);
    }
    // Hashed before the transaction, so the store holds no lock while argon2 runs.
    let password_hash = guard
        .hasher
        .hash(password.to_owned())
        .await
        .map_err(|busy| InviteError::Refused(busy.into()))?;
    match store
        .redeem_invite(&hash, Utc::now(), name, &password_hash)
        .await
    {
        Ok(Some(user)) => {
            attempt.record(true);
            tracing::info!(user = %user.name, addr = %from, admin = user.is_admin, "signed up with an invite");
            Ok(user)
        }
        Ok(None) => {
            attempt.record(false);
            Err(InviteError::NotValid)
        }
        Err(StoreError::Conflict(_)) => Err(InviteError::NameTaken(name.to_owned())),
        Err(e) => Err(e.into()),
    }
}

/// Parses a duration as the CLI takes it: a number and a unit, `s`, `m`, `h`, `d` or
/// `w` (`90m`, `24h`, `7d`); a bare number is seconds.
///
/// # Errors
/// Says what form is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || format!("invalid duration {s:?}: use a number and s, m, h, d or w (7d, 24h)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "d", "7x", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_and_urls() {
        let inv = NewInvite {
            token: "ab".repeat(32),
            admin: false,
            expires_at: Utc::now(),
        };
        assert!(well_formed(&inv.token));
        assert!(!well_formed("AB"));
        assert!(!well_formed(&"g".repeat(64)));
        assert_eq!(
            inv.url("https://ferry.example/"),
            format!("https://ferry.example/#invite={}", inv.token)
        );
    }
}
