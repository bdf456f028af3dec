//! Password hashing for user logins: argon2id PHC strings with a random salt.

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
}
