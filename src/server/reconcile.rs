//! Reconcile: this node runs exactly the users whose owner row names it, each with the
//! epoch read there (see `docs/ARCHITECTURE.md`, "Ownership"). The loop also runs the
//! failover round, and a second task drops the users whose writes the store refused.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{failover, Ctx};
use crate::store::UserId;

/// Every this many rounds the reconcile and failover loops compare everything instead
/// of trusting their cheap probes (30 s at the default interval of 2 s).
const FULL_ROUND_EVERY: u32 = 15;

/// Reconcile and failover loop.
pub(super) async fn reconcile_loop(ctx: Ctx) {
    let s = &ctx.services;
    let mut tick = tokio::time::interval(ctx.config.cluster.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !s.lease.is_valid() {
            continue;
        }
        round = round.wrapping_add(1);
        let full = round % FULL_ROUND_EVERY == 0;
        if let Err(e) = failover::adopt_round(&ctx, full).await {
            warn!(node = %s.node.id, error = %e, "failover round failed");
        }
        if let Err(e) = reconcile_if_changed(&ctx, full).await {
            warn!(node = %s.node.id, error = %e, "reconcile failed");
        }
    }
}

/// [`reconcile`] when the users this node owns may differ from the ones it runs: a
/// full comparison when `full`, otherwise only when the store's summary of them
/// ([`crate::store::Store::owned_fingerprint`]) differs from the running ones'. An
/// idle node then reads one row per round instead of every user it owns.
///
/// # Errors
/// Store errors; the next round tries again.
async fn reconcile_if_changed(ctx: &Ctx, full: bool) -> anyhow::Result<()> {
    let s = &ctx.services;
    if !full {
        let stored = s.store.owned_fingerprint(&s.node.id).await?;
        if stored == s.users.fingerprint() {
            return Ok(());
        }
    }
    reconcile(ctx).await
}

/// Runs exactly the users whose owner row names this node: starts the missing ones
/// (and ones whose epoch changed or whose actor ended), stops the others. Users a
/// migration holds are left alone.
///
/// # Errors
/// Store errors; the next round tries again.
pub(super) async fn reconcile(ctx: &Ctx) -> anyhow::Result<()> {
    let s = &ctx.services;
    let owned = s.store.owned_users(&s.node.id).await?;
    let want: HashMap<UserId, (String, i64)> = owned
        .into_iter()
        .map(|o| (o.user_id, (o.user_name, o.epoch)))
        .collect();
    let held = s.users.held();
    for r in s.users.running() {
        if held.contains(&r.id) {
            continue;
        }
        match want.get(&r.id) {
            Some((_, e)) if *e == r.epoch && !r.closed => {}
            Some(_) => {
                s.users.drop_user(r.id);
            }
            None if r.closed => {
                s.users.drop_user(r.id);
            }
            None => {
                // Assigned elsewhere (a move): release it properly.
                info!(node = %s.node.id, user = r.id, "user assigned elsewhere; stopping it here");
                s.users.stop(r.id, None).await;
            }
        }
    }
    let running: HashMap<UserId, (i64, bool)> = s
        .users
        .running()
        .into_iter()
        .map(|r| (r.id, (r.epoch, r.closed)))
        .collect();
    let mut to_start: Vec<(UserId, String, i64)> = want
        .into_iter()
        .filter(|(id, (_, epoch))| running.get(id) != Some(&(*epoch, false)))
        .map(|(id, (name, epoch))| (id, name, epoch))
        .collect();
    if to_start.len() > 1 {
        // Recently active users first: their connects queue in the limiter
        // in this order (a node restart with many users).
        let order: HashMap<UserId, usize> = s
            .store
            .users_by_recent_activity()
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, u)| (u.id, i))
            .collect();
        to_start.sort_by_key(|(id, _, _)| order.get(id).copied().unwrap_or(usize::MAX));
    }
    for (id, name, epoch) in to_start {
        if !s.lease.is_valid() {
            break;
        }
        if held.contains(&id) {
            continue;
        }
        if let Err(e) = s.users.run(id, &name, epoch).await {
            warn!(node = %s.node.id, user = %name, error = %e, "could not start user");
        }
    }
    Ok(())
}

/// Drops the users whose writes the store refused (a stale epoch: they lost
/// ownership), until the loops stop.
pub(super) async fn drop_fenced(ctx: Ctx, mut lost: mpsc::UnboundedReceiver<UserId>) {
    let s = &ctx.services;
    loop {
        tokio::select! {
            () = ctx.loops.cancelled() => return,
            u = lost.recv() => match u {
                Some(u) => {
                    if s.users.drop_user(u) {
                        warn!(node = %s.node.id, user = u, "ownership lost (fenced write); session dropped");
                    }
                }
                None => return,
            },
        }
    }
}
