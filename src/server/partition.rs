//! Partitions: telling "the store is down for everyone" from "this node is cut off
//! from it" by asking the peers (see `docs/ARCHITECTURE.md`, "Riding out the store").
//!
//! - [`on_store_loss`]: this node's lease lapsed for lack of renewal. It asks the
//!   peers it knew while the store worked (their admin API, `GET /api/admin/peer`):
//!   if one reaches the store and this node's own round-trip to it still fails, this
//!   node is the one cut off and fences (drops every session, as a lapsed lease
//!   always did); if none does, nobody can adopt its users
//!   (adopting is a compare-and-set in the store) and it keeps them, asking again
//!   every third of a lease until its lease is back ([`watch`]).
//! - [`declare_dead`]: the adopter's side, run by every failover round. A node whose
//!   heartbeat is stale is asked whether it fenced; once its lease lapsed it is
//!   declared dead (and its users adopted) only on its own word that it fenced, or
//!   after it has been unreachable from this node for longer than its lease plus
//!   `[cluster] peer_margin_secs`.
//!
//! The rules themselves are pure functions in [`crate::cluster::peer`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{info, warn};

use super::{heartbeat, Ctx};
use crate::cluster::peer::{self, LossVerdict, PeerStatus, PeerView, Probe};
use crate::migrate::AdminClient;
use crate::store::{node_state, NodeRecord};

/// What a node does when its lease lapsed for lack of renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnStoreLoss {
    /// Nobody can adopt our users (the store is down for all, or we cannot tell yet):
    /// keep every session.
    Keep,
    /// We are the one cut off: drop every session, as a lapsed lease always did.
    Fence,
}

/// What the partition logic remembers between calls; shared by the server's loops.
#[derive(Default)]
pub(super) struct Partition {
    /// The node list as last read while the store answered (other nodes only), and
    /// the database's time of that read (our own heartbeat's).
    peers: Mutex<(Vec<NodeRecord>, Option<chrono::DateTime<Utc>>)>,
    /// Adopter side: since when each suspect node has failed to answer us.
    unreachable_since: Mutex<HashMap<String, Instant>>,
    /// A [`watch`] runs.
    watching: AtomicBool,
}

/// After a heartbeat the store granted (sent at `sent`): remember the store answered,
/// and refresh the cached node list the peers are asked from.
pub(super) async fn after_heartbeat(ctx: &Ctx, sent: Instant) {
    let s = &ctx.services;
    s.store_contact.reached(sent);
    match s.store.nodes().await {
        Ok(nodes) => {
            let me = nodes
                .iter()
                .find(|n| n.id == *s.node.id)
                .map(|n| n.heartbeat_at);
            let others = nodes.into_iter().filter(|n| n.id != *s.node.id).collect();
            *ctx.partition.peers.lock().unwrap() = (others, me);
        }
        Err(e) => {
            warn!(node = %s.node.id, error = %e, "reading the node list for the peer cache failed")
        }
    }
}

/// The peers worth asking: registered, not dead, with a lease that was live when
/// the list was read.
fn live_peers(ctx: &Ctx) -> Vec<NodeRecord> {
    let (nodes, at) = ctx.partition.peers.lock().unwrap().clone();
    let at = at.unwrap_or_else(Utc::now);
    nodes
        .into_iter()
        .filter(|n| n.state != node_state::DEAD && n.lease_expires_at > at)
        .collect()
}

/// Asks `node` for its [`PeerStatus`] within the peer timeout.
async fn ask(ctx: &Ctx, node: &NodeRecord) -> Option<PeerStatus> {
    let s = &ctx.services;
    let client = AdminClient::new(
        node,
        s.store.secret_key(),
        ctx.config.cluster.peer_timeout(),
    )
    .ok()?;
    let call = client.call::<PeerStatus>(reqwest::Method::GET, "/peer", None::<&()>);
    match tokio::time::timeout(ctx.config.cluster.peer_timeout(), call).await {
        Ok(Ok(Some(status))) if status.node == node.id => Some(status),
        _ => None,
    }
}

/// Asks every live peer at once.
async fn ask_peers(ctx: &Ctx) -> Vec<(String, PeerView)> {
    let lease = ctx.config.cluster.lease;
    let peers = live_peers(ctx);
    let answers = futures::future::join_all(peers.iter().map(|n| ask(ctx, n))).await;
    peers
        .into_iter()
        .zip(answers)
        .map(|(n, a)| {
            let view = match a {
                Some(st) if st.reaches_store(lease) => PeerView::ReachesStore,
                Some(_) => PeerView::StoreLost,
                None => PeerView::Unreachable,
            };
            (n.id, view)
        })
        .collect()
}

/// This node's lease lapsed because the store did not answer: asks the peers whether
/// one of them reaches the store. `Fence` when one does (we are the one cut off);
/// otherwise `Keep`, and a [`watch`] keeps asking until the lease is back, fencing
/// the moment a peer reaches the store (or, when a peer stays silent, before its
/// margin could let it adopt us).
pub(crate) async fn on_store_loss(ctx: &Ctx) -> OnStoreLoss {
    let s = &ctx.services;
    let views = ask_peers(ctx).await;
    let verdict = peer::on_loss(&views.iter().map(|(_, v)| *v).collect::<Vec<_>>());
    info!(node = %s.node.id, ?verdict, peers = ?views, "store lost: asked the peers");
    if verdict == LossVerdict::Fence && reaches_store_now(ctx).await {
        // The store answers us again (it came back while the heartbeat waited): we
        // are not cut off, and the heartbeat renews the lease.
        info!(node = %s.node.id, "the store answers again; keeping the sessions for the heartbeat to renew");
        return OnStoreLoss::Keep;
    }
    match verdict {
        LossVerdict::Fence => OnStoreLoss::Fence,
        LossVerdict::Keep | LossVerdict::KeepForNow => {
            if !ctx.partition.watching.swap(true, Ordering::AcqRel) {
                let ctx = ctx.clone();
                let first = verdict;
                tokio::spawn(async move {
                    watch(&ctx, first).await;
                    ctx.partition.watching.store(false, Ordering::Release);
                });
            }
            OnStoreLoss::Keep
        }
    }
}

/// Whether one store round-trip completes within the peer timeout now: a node
/// whose peer reaches the store is cut off only if it cannot.
async fn reaches_store_now(ctx: &Ctx) -> bool {
    let s = &ctx.services;
    let sent = Instant::now();
    let probe = s.store.node_is_live(&s.node.id);
    match tokio::time::timeout(ctx.config.cluster.peer_timeout(), probe).await {
        Ok(Ok(_)) => {
            s.store_contact.reached(sent);
            true
        }
        _ => false,
    }
}

/// How long a node may keep its sessions while a peer stays silent: half of the
/// shortest time after which that peer could adopt them (it starts counting at the
/// earliest half a lease before our lease ran out, and waits a lease plus the margin).
fn silent_peer_deadline(lease: Duration, margin: Duration) -> Duration {
    (lease / 2 + margin) / 2
}

/// While this node keeps its sessions without a lease: asks the peers every third of
/// a lease and fences when the rule says so. Ends when the lease is back, when no
/// session is left, or at shutdown.
async fn watch(ctx: &Ctx, first: LossVerdict) {
    let s = &ctx.services;
    let cfg = &ctx.config.cluster;
    let deadline = silent_peer_deadline(cfg.lease, cfg.peer_margin);
    let mut silent_since = (first == LossVerdict::KeepForNow).then(Instant::now);
    loop {
        tokio::select! {
            () = ctx.loops.cancelled() => return,
            () = tokio::time::sleep(cfg.lease / 3) => {}
        }
        if s.lease.is_valid() || s.users.count() == 0 {
            return;
        }
        let views = ask_peers(ctx).await;
        let verdict = peer::on_loss(&views.iter().map(|(_, v)| *v).collect::<Vec<_>>());
        match verdict {
            LossVerdict::Keep => silent_since = None,
            LossVerdict::KeepForNow => {
                let since = *silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() < deadline {
                    continue;
                }
                warn!(node = %s.node.id, peers = ?views, "a peer stayed silent while the store is away; fencing before it could adopt our users");
            }
            LossVerdict::Fence => {
                if reaches_store_now(ctx).await {
                    // The store is back for us too (a peer merely renewed first):
                    // the heartbeat renews our lease.
                    continue;
                }
                warn!(node = %s.node.id, peers = ?views, "a peer reaches the store, this node does not: fencing");
            }
        }
        if verdict != LossVerdict::Keep {
            if s.lease.is_valid() {
                return;
            }
            heartbeat::lose_lease(ctx, "this node is cut off from the store");
            return;
        }
    }
}

/// The adopter's side of a failover round: asks every node whose heartbeat is stale
/// whether it fenced, and declares dead those of them whose lease lapsed (by more than
/// the cluster margin) and that [`peer::adoption`] allows. Returns their ids.
///
/// # Errors
/// Store errors; the next round tries again.
pub(super) async fn declare_dead(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    let s = &ctx.services;
    let cfg = &ctx.config.cluster;
    let suspects: Vec<NodeRecord> = s
        .store
        .suspect_nodes()
        .await?
        .into_iter()
        .filter(|n| n.id != *s.node.id)
        .collect();
    {
        let mut since = ctx.partition.unreachable_since.lock().unwrap();
        since.retain(|id, _| suspects.iter().any(|n| &n.id == id));
    }
    if suspects.is_empty() {
        return Ok(Vec::new());
    }
    let lapsed: HashSet<String> = s
        .store
        .lapsed_nodes(cfg.margin)
        .await?
        .into_iter()
        .collect();
    let answers = futures::future::join_all(suspects.iter().map(|n| ask(ctx, n))).await;
    let mut dead = Vec::new();
    for (n, answer) in suspects.iter().zip(answers) {
        let probe = {
            let mut since = ctx.partition.unreachable_since.lock().unwrap();
            match answer {
                Some(st) => {
                    since.remove(&n.id);
                    if st.fenced {
                        Probe::Fenced
                    } else {
                        Probe::Kept
                    }
                }
                None => Probe::Unreachable {
                    for_: since
                        .entry(n.id.clone())
                        .or_insert_with(Instant::now)
                        .elapsed(),
                },
            }
        };
        if !lapsed.contains(&n.id) {
            continue;
        }
        let their_lease = (n.lease_expires_at - n.heartbeat_at)
            .to_std()
            .unwrap_or(cfg.lease);
        if !peer::adoption(probe, their_lease + cfg.peer_margin) {
            continue;
        }
        if s.store
            .mark_node_dead(&n.id, n.lease_expires_at, cfg.margin)
            .await?
        {
            ctx.partition
                .unreachable_since
                .lock()
                .unwrap()
                .remove(&n.id);
            info!(node = %s.node.id, dead = %n.id, ?probe, "lapsed node declared dead");
            dead.push(n.id.clone());
        }
    }
    Ok(dead)
}

/// Shared state for [`Ctx`].
pub(super) fn new_state() -> Arc<Partition> {
    Arc::new(Partition::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_cannot_adopt_before_the_node_fences() {
        // The adopter counts from its first failed call, at the earliest half a lease
        // before our lease ran out, and waits a lease plus the margin: it adopts no
        // earlier than lease/2 + margin after our lapse. We fence well before.
        for (lease, margin) in [(6, 5), (15, 5), (1, 0), (60, 30)] {
            let (lease, margin) = (Duration::from_secs(lease), Duration::from_secs(margin));
            let d = silent_peer_deadline(lease, margin);
            assert!(d < lease / 2 + margin, "{d:?} for {lease:?}/{margin:?}");
        }
    }
}
