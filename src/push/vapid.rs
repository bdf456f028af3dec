//! VAPID (RFC 8292): the application server's P-256 key pair and the
//! `Authorization: vapid t=<JWT>, k=<public key>` header that identifies it to a
//! push service.
//!
//! One key pair serves the whole cluster (every node signs the same way), so it
//! is kept in the store: [`VapidKey::to_base64`] / [`VapidKey::from_base64`] are
//! its storage form (the 32-byte private scalar, base64url). Browsers bind a
//! subscription to the public key they were given as `applicationServerKey`
//! ([`VapidKey::application_server_key`]); a push signed by another key is
//! refused, so the key must not change once subscriptions exist.
//!
//! The JWT is ES256 (RFC 7515/7518): the signature is p256's ECDSA (RFC 6979
//! deterministic nonces) over `base64url(header) "." base64url(claims)`; only the
//! compact serialisation of one fixed algorithm is written here.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand::rngs::OsRng;
use reqwest::Url;

/// RFC 8292 §2: a push service may reject an `exp` more than 24 hours ahead.
pub const MAX_JWT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Why a VAPID key, contact or token could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    #[error("a VAPID private key is 32 bytes, base64url-encoded (got {0} bytes)")]
    KeyLength(usize),
    #[error("the VAPID private key is not base64url")]
    KeyEncoding,
    #[error("the VAPID private key is not a valid P-256 scalar")]
    KeyInvalid,
    #[error("the VAPID contact must be a mailto: address or an https: URL")]
    Contact,
    #[error("the push endpoint has no http(s) origin")]
    Audience,
}

/// The application server's key pair. `Debug` shows the public key only.
#[derive(Clone)]
pub struct VapidKey {
    key: SigningKey,
}

impl VapidKey {
    /// A new random key pair (OS randomness).
    pub fn generate() -> VapidKey {
        VapidKey {
            key: SigningKey::random(&mut OsRng),
        }
    }

    /// The key pair of a stored private scalar (exactly 32 bytes, big-endian).
    ///
    /// # Errors
    /// [`VapidError::KeyLength`] or [`VapidError::KeyInvalid`] (zero or not below
    /// the curve order).
    pub fn from_bytes(bytes: &[u8]) -> Result<VapidKey, VapidError> {
        if bytes.len() != 32 {
            return Err(VapidError::KeyLength(bytes.len()));
        }
        let key = SigningKey::from_slice(bytes).map_err(|_| VapidError::KeyInvalid)?;
        Ok(VapidKey { key })
    }

    /// The private scalar, for the store. Keep it secret.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The storage form: the private scalar, base64url without padding.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_bytes())
    }

    /// Reads [`VapidKey::to_base64`]'s form (padding tolerated).
    ///
    /// # Errors
    /// As [`VapidKey::from_bytes`], or [`VapidError::KeyEncoding`].
    pub fn from_base64(text: &str) -> Result<VapidKey, VapidError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim().trim_end_matches('='))
            .map_err(|_| VapidError::KeyEncoding)?;
        VapidKey::from_bytes(&bytes)
    }

    /// The public key as an uncompressed point (65 bytes, `0x04 || X || Y`).
    pub fn public_key(&self) -> [u8; 65] {
        let point = self.key.verifying_key().to_encoded_point(false);
        point
            .as_bytes()
            .try_into()
            .expect("an uncompressed P-256 point is 65 bytes")
    }

    /// The public key as browsers want it for `pushManager.subscribe({
    /// applicationServerKey })` and as the `k=` of the header: the uncompressed
    /// point, base64url without padding (87 characters).
    pub fn application_server_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_key())
    }

    /// The `Authorization` header value for a push to `endpoint`:
    /// `vapid t=<JWT>, k=<application server key>`. The JWT's `aud` is the
    /// endpoint's origin (scheme, host and a non-default port: RFC 6454), `exp` is
    /// `now + validity` (at most [`MAX_JWT_VALIDITY`]), `sub` the contact if any.
    ///
    /// # Errors
    /// [`VapidError::Audience`] when the endpoint is not an http(s) URL with a host.
    pub fn authorization(
        &self,
        endpoint: &Url,
        contact: Option<&Contact>,
        now: SystemTime,
        validity: Duration,
    ) -> Result<String, VapidError> {
        let token = self.token(endpoint, contact, now, validity)?;
        Ok(format!(
            "vapid t={token}, k={}",
            self.application_server_key()
        ))
    }

    /// The signed JWT alone (see [`VapidKey::authorization`]).
    ///
    /// # Errors
    /// [`VapidError::Audience`] when the endpoint is not an http(s) URL with a host.
    pub fn token(
        &self,
        endpoint: &Url,
        contact: Option<&Contact>,
        now: SystemTime,
        validity: Duration,
    ) -> Result<String, VapidError> {
        let audience = audience(endpoint)?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let exp = (now + validity.min(MAX_JWT_VALIDITY)).as_secs();
        let mut claims = serde_json::json!({ "aud": audience, "exp": exp });
        if let Some(contact) = contact {
            claims["sub"] = contact.0.clone().into();
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.application_server_key())
            .finish_non_exhaustive()
    }
}

/// The origin of a push resource URL, as RFC 8292 wants it in `aud`.
/// The origin of a push resource URL, as RFC 8292 wants it in `aud`.
fn audience(endpoint: &Url) -> Result<String, VapidError> {
    let has_host = endpoint.host_str().is_some_and(|h| !h.is_empty());
    match endpoint.scheme() {
        "https" | "http" if has_host => Ok(super::subscription::origin(endpoint)),
        _ => Err(VapidError::Audience),
    }
}

/// Who runs this application server, for the push service's operators (the
/// JWT's `sub`): a `mailto:` address or an `https:` URL (RFC 8292 §2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact(String);

impl Contact {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Contact {
    type Err = VapidError;

    fn from_str(s: &str) -> Result<Contact, VapidError> {
        let s = s.trim();
        let ok = if let Some(address) = s.strip_prefix("mailto:") {
            address
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
                && !address.contains(char::is_whitespace)
        } else {
            Url::parse(s).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
        };
        if ok {
            Ok(Contact(s.to_owned()))
        } else {
            Err(VapidError::Contact)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::VerifyingKey;

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn key_round_trips_through_storage_form() {
        let key = VapidKey::generate();
        let stored = key.to_base64();
        assert_eq!(stored.len(), 43);
        let back = VapidKey::from_base64(&stored).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(
            VapidKey::from_base64(&format!("{stored}="))
                .unwrap()
                .to_bytes(),
            key.to_bytes()
        );
        assert_eq!(
            VapidKey::from_bytes(&[1; 31]).unwrap_err(),
            VapidError::KeyLength(31)
        );
        assert_eq!(
            VapidKey::from_bytes(&[0; 32]).unwrap_err(),
            VapidError::KeyInvalid
        );
        assert_eq!(
            VapidKey::from_base64("!!").unwrap_err(),
            VapidError::KeyEncoding
        );
        assert!(
            !format!("{key:?}").contains(&stored),
            "Debug must not show the private key"
        );
    }

    #[test]
    fn application_server_key_is_the_uncompressed_point() {
        let key = VapidKey::generate();
        let k = key.application_server_key();
        assert_eq!(k.len(), 87);
        let bytes = URL_SAFE_NO_PAD.decode(&k).unwrap();
        assert_eq!(bytes[0], 0x04);
        assert!(p256::PublicKey::from_sec1_bytes(&bytes).is_ok());
    }

    #[test]
    fn token_is_es256_with_origin_audience_expiry_and_contact() {
        let key = VapidKey::generate();
        let endpoint = Url::parse("https://push.example.net:8443/wpush/v2/abc?x=1").unwrap();
        let contact: Contact = "mailto:ops@example.org".parse().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = key
            .authorization(
                &endpoint,
                Some(&contact),
                now,
                Duration::from_secs(48 * 3600),
            )
            .unwrap();
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (token, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, key.application_server_key());

        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode_json(parts[0])["alg"], "ES256");
        let claims = decode_json(parts[1]);
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(
            claims["exp"],
            1_700_000_000 + 24 * 3600,
            "validity capped at 24 h"
        );
        assert_eq!(claims["sub"], "mailto:ops@example.org");

        let verifying = VerifyingKey::from_sec1_bytes(&key.public_key()).unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        verifying.verify(input.as_bytes(), &signature).unwrap();

        // The default port is not part of the origin.
        let t = key
            .token(
                &Url::parse("https://fcm.googleapis.com:443/fcm/send/x").unwrap(),
                None,
                now,
                Duration::from_secs(60),
            )
            .unwrap();
        let claims = decode_json(t.split('.').nth(1).unwrap());
        assert_eq!(claims["aud"], "https://fcm.googleapis.com");
        assert!(claims.get("sub").is_none());
    }

    #[test]
    fn contact_is_mailto_or_https() {
        assert!("mailto:a@b.example".parse::<Contact>().is_ok());
        assert!("https://ferry.example/about".parse::<Contact>().is_ok());
        for bad in [
            "a@b.example",
            "mailto:",
            "mailto:nobody",
            "http://x.example",
            "https://",
        ] {
            assert_eq!(bad.parse::<Contact>(), Err(VapidError::Contact), "{bad}");
        }
        let key = VapidKey::generate();
        let opaque = Url::parse("data:text/plain,hi").unwrap();
        assert_eq!(
            key.token(&opaque, None, SystemTime::now(), Duration::from_secs(60)),
            Err(VapidError::Audience)
        );
    }
}
