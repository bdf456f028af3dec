//! One push attempt: encrypt, sign, POST (RFC 8030 §5), and what the answer
//! means for the subscription.
//!
//! Request: `TTL`, `Urgency: high` (a mention should wake a phone),
//! `Content-Encoding: aes128gcm`, `Authorization: vapid …`. No redirects are
//! followed (a push service has no reason to redirect, and the endpoint is not
//! ours to send elsewhere); connect and whole-request timeouts bound how long a
//! dead or hanging endpoint holds a slot.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tracing::debug;

use super::config::PushConfig;
use super::encrypt::encrypt;
use super::subscription::{check_url, Subscription};
use super::vapid::{Contact, VapidKey};

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx (201 Created, 202 Accepted): the push service has it.
    Sent,
    /// 404 or 410: the subscription expired or was unsubscribed.
    Gone,
    /// 429, 5xx or a transport error (timeout, refused, reset): try again, not
    /// before `after` when the service said so (`Retry-After`).
    Retry { after: Option<Duration> },
    /// Another status (400 bad request, 403 VAPID refused, 413 too large, …).
    Refused(u16),
    /// Not sent: the endpoint is not allowed (http while `allow_http` is off).
    Insecure,
    /// Not sent: the payload does not fit (cannot happen with `Payload::to_json`)
    /// or could not be encrypted.
    TooLarge,
}

/// Sends attempts; shared by the worker's delivery tasks.
pub(crate) struct Sender {
    http: reqwest::Client,
    vapid: VapidKey,
    contact: Option<Contact>,
    allow_http: bool,
    ttl: Duration,
    jwt_validity: Duration,
}

impl Sender {
    /// # Errors
    /// When the HTTP client cannot be built (TLS backend initialisation).
    pub(crate) fn new(cfg: &PushConfig, vapid: VapidKey) -> Result<Sender, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!cfg.allow_http)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            http,
            vapid,
            contact: cfg.contact.clone(),
            allow_http: cfg.allow_http,
            ttl: cfg.ttl,
            jwt_validity: cfg.jwt_validity,
        })
    }

    /// One attempt to deliver `plaintext` (the payload JSON) to `sub`.
    pub(crate) async fn send(&self, sub: &Subscription, plaintext: &[u8]) -> Attempt {
        if check_url(&sub.endpoint, self.allow_http).is_err() {
            return Attempt::Insecure;
        }
        let Ok(body) = encrypt(plaintext, &sub.keys) else {
            return Attempt::TooLarge;
        };
        let Ok(authorization) = self.vapid.authorization(
            &sub.endpoint,
            self.contact.as_ref(),
            SystemTime::now(),
            self.jwt_validity,
        ) else {
            // Unreachable: `check_url` admitted only http(s) URLs with a host.
            return Attempt::Insecure;
        };
        let request = self
            .http
            .post(sub.endpoint.clone())
            .header("TTL", self.ttl.as_secs())
            .header("Urgency", "high")
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(AUTHORIZATION, authorization)
            .body(body);
        match request.send().await {
            Ok(response) => classify(response.status(), response.headers(), SystemTime::now()),
            Err(e) => {
                // The URL (a bearer token) stays out of the log.
                debug!(origin = %sub.origin(), error = %e.without_url(), "push attempt failed");
                Attempt::Retry { after: None }
            }
        }
    }
}

/// What a push service's answer means.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Attempt {
    match status.as_u16() {
        200..=299 => Attempt::Sent,
        404 | 410 => Attempt::Gone,
        429 | 500..=599 => Attempt::Retry {
            after: retry_after(headers, now),
        },
        code => Attempt::Refused(code),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(date.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        h
    }

    #[test]
    fn statuses_mean_what_rfc_8030_says() {
        let now = SystemTime::now();
        let none = HeaderMap::new();
        for code in [200, 201, 202] {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap(), &none, now),
                Attempt::Sent
            );
        }
        assert_eq!(classify(StatusCode::NOT_FOUND, &none, now), Attempt::Gone);
        assert_eq!(classify(StatusCode::GONE, &none, now), Attempt::Gone);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &none, now),
            Attempt::Retry { after: None }
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, &none, now),
            Attempt::Retry { after: None }
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, &none, now),
            Attempt::Refused(403)
        );
        assert_eq!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, &none, now),
            Attempt::Refused(413)
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let after = |v: &str| match classify(StatusCode::TOO_MANY_REQUESTS, &headers(v), now) {
            Attempt::Retry { after } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            after("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(after("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(after("soon"), None);
    }
}
