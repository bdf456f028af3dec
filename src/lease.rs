//! The node's lease, as the node itself sees it: a monotonic deadline.
//!
//! The store holds the authoritative lease (`nodes.lease_expires_at`, by the database's
//! clock). Locally the node keeps `valid_until = (when it sent the renewing heartbeat)
//! plus the lease`, which is never later than what the database granted, so the node
//! stops writing before anyone may adopt its users. Checking it is one `Instant`
//! compare, done before every write and relay of a user actor and before every commit
//! of the writer.
//!
//! It sits below the store (which checks it before each commit) and imports nothing;
//! `cluster` renews it (heartbeat) and watches it (watchdog) from the server's loops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cheap, shared view of the node's lease.
#[derive(Clone, Debug)]
pub struct Lease(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    base: Instant,
    /// Microseconds after `base` until which the lease holds; 0: not held. `u64::MAX`:
    /// held for ever (a node outside any cluster loop, e.g. in unit tests).
    until_us: AtomicU64,
}

impl Lease {
    /// A lease not held yet: nothing may be written until [`Lease::renew`].
    pub fn new() -> Lease {
        Lease(Arc::new(Inner {
            base: Instant::now(),
            until_us: AtomicU64::new(0),
        }))
    }

    /// A lease that never runs out (embedding and tests without heartbeats).
    pub fn forever() -> Lease {
        let l = Lease::new();
        l.0.until_us.store(u64::MAX, Ordering::Release);
        l
    }

    /// Whether the node may still act for its users.
    pub fn is_valid(&self) -> bool {
        let until = self.0.until_us.load(Ordering::Acquire);
        until == u64::MAX || (until != 0 && self.elapsed_us(Instant::now()) < until)
    }

    /// Extends the lease to `sent + len`, where `sent` is when the renewing heartbeat
    /// was sent (before the database granted it).
    pub fn renew(&self, sent: Instant, len: Duration) {
        let until = self.elapsed_us(sent + len).max(1);
        self.0.until_us.store(until, Ordering::Release);
    }

    /// Gives the lease up (it lapsed, or the node learnt it was declared dead).
    pub fn revoke(&self) {
        self.0.until_us.store(0, Ordering::Release);
    }

    /// When the lease runs out; `None` when not held, or held for ever.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.0.until_us.load(Ordering::Acquire) {
            0 | u64::MAX => None,
            us => Some(self.0.base + Duration::from_micros(us)),
        }
    }

    fn elapsed_us(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0.base).as_micros()).unwrap_or(u64::MAX - 1)
    }
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapses_and_renews() {
        let l = Lease::new();
        assert!(!l.is_valid(), "not held before the first renewal");
        l.renew(Instant::now(), Duration::from_secs(60));
        assert!(l.is_valid());
        l.renew(
            Instant::now() - Duration::from_secs(2),
            Duration::from_secs(1),
        );
        assert!(!l.is_valid(), "a renewal sent too long ago has lapsed");
        l.renew(Instant::now(), Duration::from_secs(60));
        l.revoke();
        assert!(!l.is_valid());
        assert!(Lease::forever().is_valid());
    }
}
