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
//!
//! Three states ([`LeaseState`]):
//! - **held**: renewed in time; the node writes, relays, starts, adopts and hands
//!   users over.
//! - **riding out**: the lease lapsed because the store did not answer the renewals,
//!   and the node decided to keep its sessions (`server::partition`: nobody who could
//!   adopt its users reaches the store either). Actors keep their connections and
//!   relay live lines; the writer buffers what it would store (`store::outage`);
//!   nothing that needs the store starts (adoption, reconcile, handoffs, new actors).
//!   A successful renewal makes the lease held again and the writer writes the
//!   buffered lines back before anything newer.
//! - **lost**: not held and not riding out (declared dead, cut off while peers reach
//!   the store, woken after a pause): every actor is dropped, nothing is written.
//!
//! A store only this process can open (SQLite, behind its data directory's `flock`)
//! has nobody who could adopt the node's users, so there is nothing to fence against:
//! its lease is [`Lease::sole`], held for as long as the process runs. Its renewals
//! only record whether the store answered; a heartbeat that waits behind the writer
//! for SQLite's one write lock, or a runtime starved for a while, never lapses it
//! (which would hold every write, or drop every session, for no one's benefit).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The lease lapsed while the store was away and the node keeps its sessions.
    riding_out: AtomicBool,
    /// Whether the store answered the last renewal (or commit) attempt.
    store_reachable: AtomicBool,
    /// Held for as long as the process runs ([`Lease::sole`]).
    sole: bool,
}

/// What the node may do for its users now (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Held,
    RidingOut,
    Lost,
}

impl Lease {
    /// A lease not held yet: nothing may be written until [`Lease::renew`].
    pub fn new() -> Lease {
        Lease::with(0, false)
    }

    /// A lease that never runs out (embedding and tests without heartbeats).
    pub fn forever() -> Lease {
        Lease::with(u64::MAX, false)
    }

    /// The lease of a node on a store no other process can open (see the module
    /// docs): held from the start until the process ends, whatever the renewals do.
    pub fn sole() -> Lease {
        Lease::with(u64::MAX, true)
    }

    fn with(until_us: u64, sole: bool) -> Lease {
        Lease(Arc::new(Inner {
            base: Instant::now(),
            until_us: AtomicU64::new(until_us),
            riding_out: AtomicBool::new(false),
            store_reachable: AtomicBool::new(true),
            sole,
        }))
    }

    /// Whether this is a [`Lease::sole`]: nothing can take it, so nothing watches it.
    pub fn is_sole(&self) -> bool {
        self.0.sole
    }

    /// Whether the lease is held: the node may write to the store and start, adopt
    /// or hand over users. False while riding out a store outage.
    pub fn is_valid(&self) -> bool {
        let until = self.0.until_us.load(Ordering::Acquire);
        until == u64::MAX || (until != 0 && self.elapsed_us(Instant::now()) < until)
    }

    /// Whether the node may keep its sessions and relay live lines to their clients:
    /// the lease is held, or the node rides out a store outage.
    pub fn may_relay(&self) -> bool {
        self.is_valid() || self.riding_out()
    }

    /// Whether the lease ran out unrenewed and nothing was decided yet: neither riding
    /// out nor given up ([`Lease::revoke`]).
    pub fn lapsed(&self) -> bool {
        let until = self.0.until_us.load(Ordering::Acquire);
        until != 0 && !self.is_valid() && !self.riding_out()
    }

    /// Whether the node rides out a store outage (the lease lapsed, sessions kept).
    pub fn riding_out(&self) -> bool {
        self.0.riding_out.load(Ordering::Acquire)
    }

    /// The state, for logs, `/readyz` and tests.
    pub fn state(&self) -> LeaseState {
        if self.is_valid() {
            LeaseState::Held
        } else if self.riding_out() {
            LeaseState::RidingOut
        } else {
            LeaseState::Lost
        }
    }

    /// Extends the lease to `sent + len`, where `sent` is when the renewing heartbeat
    /// was sent (before the database granted it). Ends riding out: the deadline is
    /// set first, so the lease is never seen neither held nor riding out meanwhile.
    pub fn renew(&self, sent: Instant, len: Duration) {
        if self.0.sole {
            self.0.store_reachable.store(true, Ordering::Release);
            return;
        }
        let until = self.elapsed_us(sent + len).max(1);
        self.0.until_us.store(until, Ordering::Release);
        self.0.riding_out.store(false, Ordering::Release);
        self.0.store_reachable.store(true, Ordering::Release);
    }

    /// The lease lapsed because the store is away, and the node keeps its sessions:
    /// relay on, store writes buffered, until [`Lease::renew`] or [`Lease::revoke`].
    pub fn ride_out(&self) {
        if self.is_valid() {
            return;
        }
        self.0.riding_out.store(true, Ordering::Release);
        // A renewal that landed meanwhile wins: it may have cleared the flag before
        // it was set.
        if self.is_valid() {
            self.0.riding_out.store(false, Ordering::Release);
        }
    }

    /// Gives the lease up (it lapsed, or the node learnt it was declared dead); ends
    /// riding out too.
    ///
    /// A [`Lease::sole`] stays held: nobody else can own its users, so reconcile starts
    /// the dropped sessions again and the writer still stores what they had queued.
    pub fn revoke(&self) {
        if self.0.sole {
            return;
        }
        self.0.riding_out.store(false, Ordering::Release);
        self.0.until_us.store(0, Ordering::Release);
    }

    /// Records whether the store answered a renewal attempt.
    pub fn set_store_reachable(&self, reachable: bool) {
        self.0.store_reachable.store(reachable, Ordering::Release);
    }

    /// Whether the store answered the last renewal attempt. A lease that lapses while
    /// this is false lapsed for lack of a store, not because the node stood still.
    pub fn store_reachable(&self) -> bool {
        self.0.store_reachable.load(Ordering::Acquire)
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

    #[test]
    fn a_sole_lease_never_lapses() {
        let l = Lease::sole();
        assert!(l.is_sole() && l.is_valid());
        // A renewal sent long ago, a failed one, a revoke: still held, never riding out.
        l.renew(
            Instant::now() - Duration::from_secs(60),
            Duration::from_secs(1),
        );
        l.set_store_reachable(false);
        assert!(l.is_valid() && !l.lapsed());
        assert!(!l.store_reachable());
        l.ride_out();
        l.revoke();
        assert_eq!(l.state(), LeaseState::Held);
        assert_eq!(l.valid_until(), None);
        l.renew(Instant::now(), Duration::from_secs(1));
        assert!(
            l.store_reachable(),
            "a renewal records that the store answered"
        );
        assert!(!Lease::forever().is_sole() && !Lease::new().is_sole());
    }

    #[test]
    fn rides_out_until_renewed_or_revoked() {
        let l = Lease::new();
        // A lease renewed into the past holds until 1 µs after it was made.
        std::thread::sleep(Duration::from_millis(2));
        l.renew(
            Instant::now() - Duration::from_secs(2),
            Duration::from_secs(1),
        );
        assert_eq!(l.state(), LeaseState::Lost);
        assert!(!l.may_relay());
        assert!(l.lapsed(), "ran out, nothing decided yet");
        l.ride_out();
        assert!(!l.lapsed());
        assert_eq!(l.state(), LeaseState::RidingOut);
        assert!(l.may_relay() && !l.is_valid(), "relay yes, writes no");
        l.renew(Instant::now(), Duration::from_secs(60));
        assert_eq!(l.state(), LeaseState::Held);
        assert!(!l.riding_out(), "a renewal ends riding out");
        l.ride_out();
        assert!(
            l.is_valid() && !l.riding_out(),
            "a held lease does not ride out"
        );
        l.revoke();
        assert_eq!(l.state(), LeaseState::Lost);
        assert!(!l.may_relay());
        assert!(!l.lapsed(), "given up, not lapsed");
    }
}
