//! A push subscription: where to POST (the endpoint, a capability URL the push
//! service made for one browser or distributor) and the keys to encrypt for
//! (RFC 8291 §3: the user agent's P-256 public key `p256dh` and a 16-byte
//! `auth` secret), as `PushSubscription.toJSON()` and `WEBPUSH REGISTER` give them.
//!
//! The endpoint's path is a bearer token for that browser: `Debug` shows the
//! origin only, and so do logs.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::Url;

/// Endpoints longer than this are refused (browsers' are a few hundred bytes).
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Why a subscription is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("the endpoint is not a URL")]
    EndpointSyntax,
    #[error("the endpoint must be an https: URL")]
    EndpointInsecure,
    #[error("the endpoint must be an https: or http: URL with a host, and no user or password")]
    EndpointForm,
    #[error("the endpoint is longer than {MAX_ENDPOINT_LEN} bytes")]
    EndpointTooLong,
    #[error("keys.p256dh must be a P-256 public key, base64url-encoded")]
    P256dh,
    #[error("keys.auth must be 16 bytes, base64url-encoded")]
    Auth,
}

/// Checks an endpoint: an absolute `https:` URL with a host and no credentials
/// (`http:` only when `allow_http`, for tests and self-hosted distributors).
/// The worker checks again before each send, so a subscription stored while
/// `allow_http` was on is not used after it is turned off.
///
/// # Errors
/// The [`SubscriptionError`] that names what is wrong.
pub fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<Url, SubscriptionError> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(SubscriptionError::EndpointTooLong);
    }
    let url = Url::parse(endpoint).map_err(|_| SubscriptionError::EndpointSyntax)?;
    check_url(&url, allow_http)?;
    Ok(url)
}

pub(crate) fn check_url(url: &Url, allow_http: bool) -> Result<(), SubscriptionError> {
    let has_host = url.host_str().is_some_and(|h| !h.is_empty());
    if !has_host || !url.username().is_empty() || url.password().is_some() {
        return Err(SubscriptionError::EndpointForm);
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(SubscriptionError::EndpointInsecure),
        _ => Err(SubscriptionError::EndpointForm),
    }
}

/// A subscription's encryption keys.
#[derive(Clone, PartialEq, Eq)]
pub struct SubscriptionKeys {
    pub(crate) p256dh: p256::PublicKey,
    pub(crate) auth: [u8; 16],
}

impl SubscriptionKeys {
    /// Keys from raw bytes: `p256dh` a SEC1 point (browsers give the 65-byte
    /// uncompressed form), `auth` 16 bytes.
    ///
    /// # Errors
    /// [`SubscriptionError::P256dh`] or [`SubscriptionError::Auth`].
    pub fn new(p256dh: &[u8], auth: &[u8]) -> Result<SubscriptionKeys, SubscriptionError> {
        let p256dh =
            p256::PublicKey::from_sec1_bytes(p256dh).map_err(|_| SubscriptionError::P256dh)?;
        let auth = auth.try_into().map_err(|_| SubscriptionError::Auth)?;
        Ok(SubscriptionKeys { p256dh, auth })
    }

    /// Keys as `PushSubscription.toJSON()` gives them: base64url, padded or not
    /// (the standard alphabet is accepted too).
    ///
    /// # Errors
    /// [`SubscriptionError::P256dh`] or [`SubscriptionError::Auth`].
    pub fn from_base64(p256dh: &str, auth: &str) -> Result<SubscriptionKeys, SubscriptionError> {
        let p256dh = decode_lenient(p256dh).ok_or(SubscriptionError::P256dh)?;
        let auth = decode_lenient(auth).ok_or(SubscriptionError::Auth)?;
        SubscriptionKeys::new(&p256dh, &auth)
    }

    /// The public key, uncompressed (65 bytes).
    pub fn p256dh(&self) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        self.p256dh.to_encoded_point(false).as_bytes().to_vec()
    }

    pub fn auth(&self) -> [u8; 16] {
        self.auth
    }

    /// `(p256dh, auth)` base64url without padding, the storage form.
    pub fn to_base64(&self) -> (String, String) {
        (
            URL_SAFE_NO_PAD.encode(self.p256dh()),
            URL_SAFE_NO_PAD.encode(self.auth),
        )
    }
}

impl fmt::Debug for SubscriptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriptionKeys { .. }")
    }
}

fn decode_lenient(text: &str) -> Option<Vec<u8>> {
    let text: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// What a push carries to a subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Ferry's JSON [`Payload`](super::Payload) (the web client, other clients).
    #[default]
    Json,
    /// The IRC line itself, as `soju.im/webpush` (`WEBPUSH REGISTER`) specifies.
    Irc,
}

/// Where to push and how to encrypt for it.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    pub endpoint: Url,
    pub keys: SubscriptionKeys,
    pub format: Format,
}

impl Subscription {
    /// A subscription from what a client sent, checked.
    ///
    /// # Errors
    /// The [`SubscriptionError`] that names the bad field.
    pub fn parse(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        allow_http: bool,
    ) -> Result<Subscription, SubscriptionError> {
        Ok(Subscription {
            endpoint: check_endpoint(endpoint, allow_http)?,
            keys: SubscriptionKeys::from_base64(p256dh, auth)?,
            format: Format::Json,
        })
    }

    /// The endpoint's origin, which is all that logs show of it.
    pub fn origin(&self) -> String {
        origin(&self.endpoint)
    }
}

/// An http(s) URL's origin (RFC 6454): scheme, host, and the port unless it is
/// the scheme's default (`Url::port` is `None` then).
pub(crate) fn origin(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}://{}:{port}", url.scheme(), url.host_str().unwrap_or("")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("origin", &self.origin())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (String, String) {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let keys = SubscriptionKeys::new(
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                &secret.public_key(),
                false,
            )
            .as_bytes(),
            &[7; 16],
        )
        .unwrap();
        keys.to_base64()
    }

    #[test]
    fn endpoints_must_be_https_unless_allowed() {
        assert!(check_endpoint("https://push.example/abc", false).is_ok());
        assert_eq!(
            check_endpoint("http://127.0.0.1:8080/abc", false),
            Err(SubscriptionError::EndpointInsecure)
        );
        assert!(check_endpoint("http://127.0.0.1:8080/abc", true).is_ok());
        for bad in [
            "ftp://x.example/a",
            "https://u:p@x.example/a",
            "mailto:a@b",
            "file:///etc/passwd",
        ] {
            assert_eq!(
                check_endpoint(bad, true),
                Err(SubscriptionError::EndpointForm),
                "{bad}"
            );
        }
        assert_eq!(
            check_endpoint("not a url", true),
            Err(SubscriptionError::EndpointSyntax)
        );
        let long = format!("https://x.example/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(
            check_endpoint(&long, true),
            Err(SubscriptionError::EndpointTooLong)
        );
    }

    #[test]
    fn keys_accept_browser_encodings_and_refuse_garbage() {
        let (p256dh, auth) = keys();
        let sub = Subscription::parse("https://push.example:444/s/secret", &p256dh, &auth, false)
            .unwrap();
        assert_eq!(sub.keys.to_base64(), (p256dh.clone(), auth.clone()));
        // Padded, standard alphabet.
        let std_p = base64::engine::general_purpose::STANDARD.encode(sub.keys.p256dh());
        let std_a = base64::engine::general_purpose::STANDARD.encode(sub.keys.auth());
        assert_eq!(
            SubscriptionKeys::from_base64(&std_p, &std_a).unwrap(),
            sub.keys
        );

        assert_eq!(
            SubscriptionKeys::from_base64("AAAA", &auth),
            Err(SubscriptionError::P256dh)
        );
        assert_eq!(
            SubscriptionKeys::from_base64(&p256dh, "AAAA"),
            Err(SubscriptionError::Auth)
        );
        assert_eq!(
            SubscriptionKeys::from_base64(&p256dh, "@@"),
            Err(SubscriptionError::Auth)
        );

        let shown = format!("{sub:?}");
        assert!(
            shown.contains("https://push.example:444") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
