//! Cluster mode: what a node needs to share users safely with other nodes — its
//! [`Lease`] (renewed by the heartbeat, checked before every write), its file
//! descriptor budget ([`FdBudget`]), the health it publishes ([`LoopLag`],
//! [`rss_bytes`]) and placement ([`plan`], [`Snapshot`], [`owner_of`]).
//!
//! The loops that use them — heartbeat, watchdog, reconcile, failover — run in
//! `server` (see `docs/ARCHITECTURE.md`, "Cluster"): this module holds the policy and
//! the pieces, and imports nothing above the store.

mod fd;
mod health;
pub mod peer;
mod placement;

use std::time::Duration;

/// The lease is defined below the store, whose writer checks it before each commit.
pub use crate::lease::Lease;
pub use fd::{open_fds, raise_nofile, FdBudget};
pub use health::{mem_available, rss_bytes, LoopLag};
pub use placement::{
    candidates, fits, owner_of, ownership, plan, Advertised, Candidate, KeyCaps, Need, Owner,
    Snapshot,
};

/// Cluster settings of a node.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// How long a heartbeat keeps the node's lease; renewed every third of it.
    pub lease: Duration,
    /// How long after a lease ran out other nodes wait before adopting its users:
    /// covers clock-rate differences and a node still tearing down.
    pub margin: Duration,
    /// How often the reconcile and failover loops run.
    pub interval: Duration,
    /// How much longer than its lease a lapsed node must have been unreachable from
    /// an adopter, which has not heard it say it fenced, before its users are adopted
    /// (`[cluster] peer_margin_secs`, default 5 s; see [`peer::adoption`]).
    pub peer_margin: Duration,
    /// How long a user with every network waiting for a session slot waits before it
    /// is moved to a node with room for all of them (spill; default 30 s;
    /// `--spill-after-seconds`, `[serve] spill_after_secs`).
    pub spill_after: Duration,
}

impl ClusterConfig {
    /// Settings for a lease of `lease`: margin a fifth of it (at least 500 ms), loops
    /// twice per heartbeat.
    pub fn with_lease(lease: Duration) -> ClusterConfig {
        ClusterConfig {
            lease,
            margin: (lease / 5).max(Duration::from_millis(500)),
            interval: (lease / 6).clamp(Duration::from_millis(200), Duration::from_secs(2)),
            peer_margin: Duration::from_secs(5),
            spill_after: Duration::from_secs(30),
        }
    }

    /// How long one call to a peer may take: a quarter of the lease, between 0.5 and
    /// 3 s, so that a decision is made well within a lease.
    pub fn peer_timeout(&self) -> Duration {
        (self.lease / 4).clamp(Duration::from_millis(500), Duration::from_secs(3))
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / 3
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig::with_lease(Duration::from_secs(15))
    }
}
