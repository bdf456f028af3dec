//! Cluster mode: what a node needs to share users safely with other nodes — its
//! [`Lease`] (renewed by the heartbeat, checked before every write), its file
//! descriptor budget ([`FdBudget`]), the health it publishes ([`LoopLag`],
//! [`rss_bytes`]), placement ([`plan`], [`Snapshot`], [`owner_of`]) and how far apart
//! a rebalance leaves nodes ([`Tolerance`], [`AutoRebalance`]).
//!
//! The loops that use them — heartbeat, watchdog, reconcile, failover — run in
//! `server` (see `docs/ARCHITECTURE.md`, "Cluster"): this module holds the policy and
//! the pieces, and imports nothing above the store.

mod fd;
mod health;
pub mod peer;
mod placement;
mod tolerance;

use std::time::Duration;

/// The lease is defined below the store, whose writer checks it before each commit.
pub use crate::lease::Lease;
pub use fd::{open_fds, raise_nofile, FdBudget};
pub use health::{mem_available, rss_bytes, LoopLag};
pub use placement::{
    candidates, fits, owner_of, ownership, plan, Advertised, Candidate, KeyCaps, Need, Owner,
    Snapshot,
};
pub use tolerance::Tolerance;

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
    /// Whether and how rebalancing runs by itself (`[cluster] auto_rebalance…`, off
    /// by default).
    pub auto_rebalance: AutoRebalance,
}

/// Automatic rebalancing (`[cluster] auto_rebalance`, `--auto-rebalance`): every
/// `interval` the leader — the live active node with the lowest id — plans like
/// `ferry migrate rebalance` and, when the nodes are outside `tolerance`, runs at most
/// `max_moves` moves as a rebalance migration (`server::rebalance`).
#[derive(Clone, Debug, PartialEq)]
pub struct AutoRebalance {
    /// Off by default.
    pub enabled: bool,
    /// How often the leader looks (default 300 s).
    pub interval: Duration,
    /// Users moved per round at most (default 10).
    pub max_moves: usize,
    /// How far apart nodes may stay (default 10%, as `migrate rebalance`).
    pub tolerance: Tolerance,
}

impl Default for AutoRebalance {
    fn default() -> Self {
        AutoRebalance {
            enabled: false,
            interval: Duration::from_secs(300),
            max_moves: 10,
            tolerance: Tolerance::default(),
        }
    }
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
            auto_rebalance: AutoRebalance::default(),
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
