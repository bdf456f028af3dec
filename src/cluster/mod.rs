//! Cluster mode: node leases, single ownership of users with epochs, failover.
//!
//! Every node runs the same loops (see `docs/ARCHITECTURE.md`, "Cluster"):
//!
//! - **heartbeat** every lease/3: renews the lease in the store (by the database's
//!   clock) and locally ([`Lease`]), publishes health and load. A node that finds its
//!   local lease already lapsed (it could not renew in time, or it was paused) drops
//!   every actor *before* renewing; a node the others declared `dead` registers again.
//! - **watchdog**: wakes when the local lease would run out; if it was not renewed,
//!   drops every actor at once (no QUIT, no writes).
//! - **reconcile**: runs exactly the users whose owner row names this node, with the
//!   epoch read there; starts the missing ones and stops the others.
//! - **failover**: adopts users whose owner lapsed (lease + margin), is dead or gone,
//!   or who have no owner, spread over live active nodes by headroom ([`plan`]).
//!
//! The node-side operations (start, stop, drop, owner lookup) live on
//! [`crate::node::Node`]; this module holds the policy and the loops.

mod fd;
mod health;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

pub use fd::{open_fds, raise_nofile, FdBudget};
pub use health::{mem_available, rss_bytes, LoopLag};
/// The lease is defined below the store, whose writer checks it before each commit.
pub use crate::lease::Lease;

use crate::node::NodeRef;
use crate::store::{node_state, NodeRecord, Ownership, UserId};

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
}

impl ClusterConfig {
    /// Settings for a lease of `lease`: margin a fifth of it (at least 500 ms), loops
    /// twice per heartbeat.
    pub fn with_lease(lease: Duration) -> ClusterConfig {
        ClusterConfig {
            lease,
            margin: (lease / 5).max(Duration::from_millis(500)),
            interval: (lease / 6).clamp(Duration::from_millis(200), Duration::from_secs(2)),
        }
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

/// A node that may take users in a placement round, with its free capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Upstream sessions it can still take (fd budget minus what it holds).
    pub headroom: i64,
}

/// Places `users` (in order) on `nodes`: each on the node with the most headroom left
/// (ties: the smaller id), skipping full nodes. Deterministic, so every node computes
/// the same plan from the same snapshot and claims only its own share; users left
/// unplaced (every node full) are returned with no node.
pub fn plan(users: &[UserId], nodes: &[Candidate]) -> Vec<(UserId, Option<String>)> {
    let mut free: Vec<(i64, &str)> = nodes.iter().map(|n| (n.headroom, &n.id[..])).collect();
    users
        .iter()
        .map(|&u| {
            let best = free
                .iter_mut()
                .filter(|(h, _)| *h > 0)
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
            match best {
                Some((h, id)) => {
                    *h -= 1;
                    (u, Some((*id).to_owned()))
                }
                None => (u, None),
            }
        })
        .collect()
}

/// The live, active nodes and their headroom, from the node list and owner rows.
pub fn candidates(nodes: &[NodeRecord], live: &[String], owners: &[Ownership]) -> Vec<Candidate> {
    let mut owned: HashMap<&str, i64> = HashMap::new();
    for o in owners {
        if let Some(n) = &o.node_id {
            *owned.entry(n).or_default() += 1;
        }
    }
    nodes
        .iter()
        .filter(|n| n.state == node_state::ACTIVE && live.contains(&n.id))
        .map(|n| {
            let held = n
                .health
                .sessions
                .max(owned.get(&n.id[..]).copied().unwrap_or(0));
            Candidate {
                id: n.id.clone(),
                headroom: n.fd_budget - held,
            }
        })
        .collect()
}

/// Heartbeat loop: renews the lease every lease/3.
pub(crate) async fn heartbeat(node: NodeRef) {
    let cfg = node.config.cluster.clone();
    let every = cfg.heartbeat_interval().min(node.config.heartbeat_interval);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Woken after a pause, or renewals kept failing: the lease is gone, and with it
        // the right to act for any user. Drop everything before anything else.
        if !node.lease.is_valid() && node.user_count() > 0 {
            node.lose_lease("the lease lapsed before it could be renewed");
        }
        let sent = Instant::now();
        let health = node.health();
        match node
            .store
            .heartbeat_node(&node.id, &health, cfg.lease)
            .await
        {
            Ok(true) => node.lease.renew(sent, cfg.lease),
            Ok(false) => {
                // Declared dead (or removed) while away: its users were adopted. Start
                // over as a fresh node; reconcile runs whatever is assigned to it.
                warn!(node = %node.id, "this node was declared dead or removed; registering again");
                node.lose_lease("the node was declared dead");
                match node.register().await {
                    Ok(()) => node.lease.renew(sent, cfg.lease),
                    Err(e) => error!(node = %node.id, error = %e, "registering again failed"),
                }
            }
            Err(e) => warn!(node = %node.id, error = %e, "heartbeat failed"),
        }
    }
}

/// Watchdog: drops every actor the moment the local lease runs out unrenewed.
pub(crate) async fn watchdog(node: NodeRef) {
    loop {
        let wake = node
            .lease
            .valid_until()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        if !node.lease.is_valid() && node.user_count() > 0 {
            node.lose_lease("the lease ran out");
        }
    }
}

/// Every this many rounds the reconcile and failover loops compare everything instead
/// of trusting their cheap probes (30 s at the default interval of 2 s).
const FULL_ROUND_EVERY: u32 = 15;

/// Reconcile and failover loop.
pub(crate) async fn reconcile_loop(node: NodeRef) {
    let mut tick = tokio::time::interval(node.config.cluster.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.lease.is_valid() {
            continue;
        }
        round = round.wrapping_add(1);
        let full = round % FULL_ROUND_EVERY == 0;
        if let Err(e) = adopt_round(&node, full).await {
            warn!(node = %node.id, error = %e, "failover round failed");
        }
        if let Err(e) = node.reconcile_if_changed(full).await {
            warn!(node = %node.id, error = %e, "reconcile failed");
        }
    }
}

/// One failover round: declares lapsed nodes dead, then claims this node's share of
/// the users that need an owner. Returns how many it claimed. Unless `full`, it first
/// asks the store whether there is obvious work ([`Store::adoption_pending`]) and
/// stops there when there is none, so an idle cluster does not read every user every
/// round; the rare cases that probe misses wait for the next full round.
///
/// # Errors
/// Store errors; the next round tries again.
///
/// [`Store::adoption_pending`]: crate::store::Store::adoption_pending
pub async fn adopt_round(node: &NodeRef, full: bool) -> anyhow::Result<usize> {
    let margin = node.config.cluster.margin;
    let dead = node.store.mark_lapsed_nodes_dead(margin).await?;
    for d in &dead {
        warn!(node = %node.id, dead = %d, "node lease lapsed; declared dead, adopting its users");
    }
    if !full && dead.is_empty() && !node.store.adoption_pending(margin).await? {
        return Ok(0);
    }
    let adoptable = node.store.adoptable_users(margin).await?;
    if adoptable.is_empty() {
        return Ok(0);
    }
    let nodes = node.store.nodes().await?;
    let live = node.store.live_active_nodes().await?;
    let owners = node.store.ownerships().await?;
    let cands = candidates(&nodes, &live, &owners);
    let ids: Vec<UserId> = adoptable.iter().map(|o| o.user_id).collect();
    let mut claimed = 0;
    for ((user, target), o) in plan(&ids, &cands).into_iter().zip(&adoptable) {
        if target.as_deref() != Some(&node.id[..]) {
            continue;
        }
        if !node.lease.is_valid() {
            break;
        }
        if let Some(epoch) = node
            .store
            .assign_user(user, Some(&node.id), o.epoch)
            .await?
        {
            info!(node = %node.id, user = %o.user_name, from = ?o.node_id, epoch, "adopted user");
            claimed += 1;
        }
    }
    if adoptable.len() > claimed && cands.iter().all(|c| c.id != node.id) {
        // This node is not a candidate (full, draining or not live): say so once a round.
        if cands.is_empty() {
            warn!(node = %node.id, waiting = adoptable.len(), "users need an owner but no active node has room");
        }
    }
    Ok(claimed)
}

/// Hash of the effective config minus per-node addresses and identity.
pub fn config_fingerprint(cfg: &crate::config::NodeConfig) -> String {
    use sha2::{Digest, Sha256};
    let text = config_summary(cfg);
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// The settings the fingerprint covers, as text (a preflight lists them when the
/// fingerprints differ, so the operator sees what to compare).
pub fn config_summary(cfg: &crate::config::NodeConfig) -> String {
    let u = &cfg.user;
    format!(
        "v{} quit={:?} ping={:?}/{:?} register={:?} backoff={:?}..{:?} flood={}/{} writer={:?}/{:?} lease={:?}/{:?} login_delay={:?}",
        env!("CARGO_PKG_VERSION"),
        u.quit_message,
        u.ping_interval,
        u.ping_timeout,
        u.register_timeout,
        u.backoff_min,
        u.backoff_max,
        u.flood_rate,
        u.flood_burst,
        cfg.writer.max_batch,
        cfg.writer.max_delay,
        cfg.cluster.lease,
        cfg.cluster.margin,
        cfg.downstream.login_failure_delay,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, headroom: i64) -> Candidate {
        Candidate {
            id: id.into(),
            headroom,
        }
    }

    #[test]
    fn plan_spreads_by_headroom() {
        let p = plan(&[1, 2, 3, 4, 5], &[c("a", 2), c("b", 4), c("full", 0)]);
        let on = |n: &str| p.iter().filter(|(_, t)| t.as_deref() == Some(n)).count();
        assert_eq!(on("b"), 3, "{p:?}");
        assert_eq!(on("a"), 2, "{p:?}");
        assert_eq!(on("full"), 0);
        // Ties go to the smaller id, so every node computes the same plan.
        assert_eq!(
            plan(&[7], &[c("y", 1), c("x", 1)]),
            vec![(7, Some("x".into()))]
        );
        // Nobody has room: unplaced.
        assert_eq!(plan(&[7], &[c("x", 0)]), vec![(7, None)]);
    }
}
