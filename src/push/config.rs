//! Push settings: the `[push]` section of the config file (see
//! `ferry.example.toml` once wired), with defaults for a node.

use std::time::Duration;

use super::vapid::Contact;

/// How the node delivers pushes. Every field has a default.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// The VAPID `sub`: who runs this server, for push services' operators
    /// (`mailto:` or `https:`). Some push services (Apple's) refuse pushes
    /// without it.
    pub contact: Option<Contact>,
    /// Allow `http:` endpoints (tests, self-hosted distributors on loopback or a
    /// LAN). Off: only `https:`.
    pub allow_http: bool,
    /// Notifications waiting for the worker; more are dropped and counted.
    pub queue: usize,
    /// Deliveries waiting for a free slot or a retry; more are dropped and counted.
    pub backlog: usize,
    /// Requests in flight at once, for the whole node.
    pub concurrency: usize,
    /// Pushes per minute to one endpoint, after `endpoint_burst`; more wait.
    pub endpoint_per_minute: u32,
    pub endpoint_burst: u32,
    /// At most one push per (user, buffer) per this long (zero: no coalescing).
    pub coalesce_window: Duration,
    /// Buffers tracked for coalescing at once; pushes for more are dropped.
    pub coalesce_buffers: usize,
    /// Connecting to an endpoint (TCP and TLS) may take this long.
    pub connect_timeout: Duration,
    /// A whole request, answer included, may take this long: a hanging endpoint
    /// holds a slot no longer.
    pub request_timeout: Duration,
    /// Tries per delivery, the first included (429, 5xx and transport errors
    /// are retried).
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt up to `backoff_max`; a
    /// `Retry-After` later than the computed delay is honoured, and one later
    /// than `backoff_max` ends the delivery.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long the push service keeps a push for an offline device (`TTL`).
    pub ttl: Duration,
    /// Validity of each VAPID token (capped at 24 h).
    pub jwt_validity: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            contact: None,
            allow_http: false,
            queue: 1024,
            backlog: 4096,
            concurrency: 16,
            endpoint_per_minute: 60,
            endpoint_burst: 10,
            coalesce_window: Duration::from_secs(5),
            coalesce_buffers: 16_384,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_attempts: 5,
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            ttl: Duration::from_secs(24 * 3600),
            jwt_validity: Duration::from_secs(12 * 3600),
        }
    }
}
