//! Logins: argon2id password hashing, the bounded pool that runs it ([`Hasher`]) and
//! the login guard every door goes through ([`LoginGuard`]: HTTP login, IRC `PASS`,
//! SASL PLAIN, password change).
//!
//! - `hasher`: a semaphore sized from memory around argon2 (about 19 MiB a check), so a
//!   flood of logins queues, then is refused, and never takes the node's memory;
//! - `guard`: failure budgets per source address and per account with exponential
//!   delays, the failed-login log line fail2ban matches, and the counters `/metrics`
//!   shows.

mod guard;
mod hasher;

use std::time::Duration;

pub use guard::{Attempt, Door, GuardStats, LoginGuard, Refused, DUMMY_HASH};
pub use hasher::{permits_for, Busy, Hasher, HasherStats};

/// Login and session settings (`[auth]` in the config file).
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Concurrent password hashes; `None` sizes it from cores and available memory
    /// ([`permits_for`]).
    pub hash_permits: Option<usize>,
    /// Password checks that may wait for a permit; beyond that a login is refused as a
    /// temporary failure (IRC) or 503 (HTTP).
    pub hash_queue: usize,
    /// Failed logins an address or an account may have before delays start.
    pub free_failures: u32,
    /// The first delay after the free failures; it doubles with each further failure.
    pub failure_delay: Duration,
    /// The longest delay.
    pub failure_delay_max: Duration,
    /// A failure record is forgotten this long after its last failure.
    pub forget_after: Duration,
    /// Addresses (and, separately, accounts) remembered at most; the oldest go first.
    pub max_records: usize,
    /// Shortest password accepted for a new user or a password change.
    pub min_password_len: usize,
    /// A login session ends this long after it was created, however often it is used
    /// (the sliding idle expiry applies as well).
    pub session_lifetime: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            hash_permits: None,
            hash_queue: 64,
            free_failures: 5,
            failure_delay: Duration::from_secs(1),
            failure_delay_max: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            max_records: 100_000,
            min_password_len: MIN_PASSWORD_LEN,
            session_lifetime: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The default shortest password.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Checks a new password against the minimum length (in characters).
///
/// # Errors
/// A message for the person choosing the password.
pub fn check_new_password(password: &str, min_len: usize) -> Result<(), String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let len = password.chars().count();
    if len < min_len {
        return Err(format!(
            "the password is too short: {len} characters, at least {min_len} are required"
        ));
    }
    Ok(())
}

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes a password into a PHC string (`$argon2id$v=19$…`) with a fresh salt.
///
/// # Panics
/// Never in practice: hashing with the default parameters cannot fail.
pub fn hash_password(pw: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// True when `pw` matches the PHC string `hash`. A malformed hash never matches.
pub fn verify_password(hash: &str, pw: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(pw.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret:/x");
        assert!(h.starts_with("$argon2"));
        assert!(verify_password(&h, "s3cret:/x"));
        assert!(!verify_password(&h, "s3cret"));
        assert!(!verify_password("not a hash", "s3cret"));
        assert_ne!(h, hash_password("s3cret:/x"), "salts differ");
    }

    #[test]
    fn minimum_length() {
        assert!(check_new_password("", 0).is_err());
        assert!(check_new_password("1234567", 8)
            .unwrap_err()
            .contains("at least 8"));
        assert!(check_new_password("12345678", 8).is_ok());
        assert!(
            check_new_password("éééééééé", 8).is_ok(),
            "characters, not bytes"
        );
    }
}
