//! Failover: adopting the users whose owner is gone (see `docs/ARCHITECTURE.md`,
//! "Failover"). Every node runs the same round and claims only its share of
//! [`cluster::plan`], by compare-and-set on the owner row.

use tracing::{info, warn};

use super::{partition, Ctx};
use crate::cluster;
use crate::store::UserId;

/// One failover round: declares lapsed nodes dead (those that said they fenced, or
/// stayed unreachable past their lease and the peer margin: `partition`), then claims this node's share of
/// the users that need an owner. Returns how many it claimed. Unless `full`, it first
/// asks the store whether there is obvious work ([`Store::adoption_pending`]) and
/// stops there when there is none, so an idle cluster does not read every user every
/// round; the rare cases that probe misses wait for the next full round.
///
/// # Errors
/// Store errors; the next round tries again.
///
/// [`Store::adoption_pending`]: crate::store::Store::adoption_pending
pub(super) async fn adopt_round(ctx: &Ctx, full: bool) -> anyhow::Result<usize> {
    let s = &ctx.services;
    let me = &*s.node.id;
    let dead = partition::declare_dead(ctx).await?;
    for d in &dead {
        warn!(node = %me, dead = %d, "node lease lapsed; declared dead, adopting its users");
    }
    if !full && dead.is_empty() && !s.store.adoption_pending().await? {
        return Ok(0);
    }
    let adoptable = s.store.adoptable_users().await?;
    if adoptable.is_empty() {
        return Ok(0);
    }
    // Placement by the networks' room (`cluster::Snapshot::plan`).
    let snap = cluster::Snapshot::load(&s.store).await?;
    let cands = snap.candidates();
    let ids: Vec<UserId> = adoptable.iter().map(|o| o.user_id).collect();
    let mut claimed = 0;
    for ((user, target), o) in snap.plan(&ids).into_iter().zip(&adoptable) {
        if target.as_deref() != Some(me) {
            continue;
        }
        if !s.lease.is_valid() {
            break;
        }
        if let Some(epoch) = s.store.adopt_user(user, me, o.epoch).await? {
            info!(node = %me, user = %o.user_name, from = ?o.node_id, epoch, "adopted user");
            claimed += 1;
        }
    }
    if adoptable.len() > claimed && cands.iter().all(|c| c.id != me) {
        // This node is not a candidate (full, draining or not live): say so once a round.
        if cands.is_empty() {
            warn!(node = %me, waiting = adoptable.len(), "users need an owner but no active node has room");
        }
    }
    Ok(claimed)
}
