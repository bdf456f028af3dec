//! The spill loop: moves this node's users that wait too long for a session slot to a
//! node with room (`migrate::spill`, see `docs/operations.md`, "Placement and spill").

use std::time::Duration;

use tracing::warn;

use super::Ctx;
use crate::migrate::spill::Spiller;

pub(super) async fn spill_loop(ctx: Ctx) {
    let s = &ctx.services;
    let after = ctx.config.cluster.spill_after;
    // Often enough that a user spills soon after its wait is due, rarely enough that
    // an idle node costs nothing (a round without waiters reads no store).
    let every = (after / 6).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut spiller = Spiller::default();
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A draining node's waiting users wait for the drain, which moves them (two
        // movers of one user would race each other).
        if s.limiter.is_draining() {
            continue;
        }
        if let Err(e) = spiller.round(s, after).await {
            warn!(node = %s.node.id, error = %e, "spill round failed");
        }
    }
}
