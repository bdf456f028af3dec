//! Node-wide push counters, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the push worker did. Each delivery (one notification to one
/// subscription) ends as exactly one of sent, failed, removed or dropped.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Accepted by the push service (2xx).
    pub sent: AtomicU64,
    /// Given up: a refusal other than 404/410, attempts exhausted, a
    /// `Retry-After` too far ahead, or an endpoint no longer allowed.
    pub failed: AtomicU64,
    /// Notifications or deliveries dropped because a queue was full.
    pub dropped: AtomicU64,
    /// Subscriptions the push service said are gone (404/410).
    pub removed: AtomicU64,
    /// Attempts retried (429, 5xx, transport errors).
    pub retried: AtomicU64,
    /// Lines folded into a later push by coalescing.
    pub coalesced: AtomicU64,
    /// Held (coalesced) pushes not sent because the user read past them meanwhile.
    pub read_meanwhile: AtomicU64,
}

impl PushStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(sent, failed, dropped, removed)` now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.removed.load(Ordering::Relaxed),
        )
    }
}
