//! RFC 8291 message encryption for Web Push, `aes128gcm` content coding
//! (RFC 8188), from `web-push-native`: an ephemeral P-256 key per message, ECDH
//! with the subscription's `p256dh`, HKDF with its `auth` secret, AES-128-GCM,
//! one record.
//!
//! RFC 8291 §4 lets a push service refuse bodies over 4096 bytes. The body is
//! the RFC 8188 header (salt 16, record size 4, key id length 1, key id = our
//! 65-byte public key) followed by one record: the plaintext, a 1-byte padding
//! delimiter and the 16-byte tag. So at most 4096 − 86 − 17 = 3993 bytes of
//! plaintext fit.

use super::subscription::SubscriptionKeys;

/// The largest body a push service must accept (RFC 8291 §4).
pub const MAX_RECORD: usize = 4096;
/// Salt, record size, key id length and the uncompressed public key.
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// Padding delimiter and AEAD tag.
const RECORD_OVERHEAD: usize = 1 + 16;
/// The most plaintext that still fits [`MAX_RECORD`]: 3993 bytes.
pub const MAX_PLAINTEXT: usize = MAX_RECORD - HEADER_LEN - RECORD_OVERHEAD;

/// Why a message was not encrypted.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    #[error("{0} bytes of plaintext do not fit a push message (at most {MAX_PLAINTEXT})")]
    TooLarge(usize),
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// Encrypts `plaintext` for one subscription: the request body of a push, to
/// be sent with `Content-Encoding: aes128gcm`.
///
/// # Errors
/// [`EncryptError::TooLarge`] past [`MAX_PLAINTEXT`].
pub fn encrypt(plaintext: &[u8], keys: &SubscriptionKeys) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLarge(plaintext.len()));
    }
    let auth = web_push_native::Auth::clone_from_slice(&keys.auth);
    let body = web_push_native::encrypt(plaintext.to_vec(), &keys.p256dh, &auth)
        .map_err(|e| EncryptError::Crypto(e.to_string()))?;
    debug_assert_eq!(body.len(), plaintext.len() + HEADER_LEN + RECORD_OVERHEAD);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;

    fn subscriber() -> (p256::SecretKey, [u8; 16], SubscriptionKeys) {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let auth: [u8; 16] = rand::random();
        let keys = SubscriptionKeys::new(
            secret.public_key().to_encoded_point(false).as_bytes(),
            &auth,
        )
        .unwrap();
        (secret, auth, keys)
    }

    #[test]
    fn the_largest_plaintext_makes_a_4096_byte_body_that_decrypts() {
        let (secret, auth, keys) = subscriber();
        let plaintext = "é".repeat(MAX_PLAINTEXT / 2) + "x";
        assert_eq!(plaintext.len(), MAX_PLAINTEXT);
        let body = encrypt(plaintext.as_bytes(), &keys).unwrap();
        assert_eq!(body.len(), MAX_RECORD);
        let auth = web_push_native::Auth::clone_from_slice(&auth);
        let back = web_push_native::decrypt(body, &secret, &auth).unwrap();
        assert_eq!(back, plaintext.as_bytes());

        assert!(matches!(
            encrypt(&[b'x'; MAX_PLAINTEXT + 1], &keys),
            Err(EncryptError::TooLarge(3994))
        ));
    }

    #[test]
    fn each_message_has_its_own_salt_and_key() {
        let (_, _, keys) = subscriber();
        let a = encrypt(b"same", &keys).unwrap();
        let b = encrypt(b"same", &keys).unwrap();
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "ephemeral key");
    }
}
