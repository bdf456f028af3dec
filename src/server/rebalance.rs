//! The automatic rebalance loop (`[cluster] auto_rebalance`, off by default): every
//! `auto_rebalance_interval` a round of `migrate::auto`, in which only the leader (the
//! live active node with the lowest id) acts; longer after a round whose migration did
//! not complete. See docs/operations.md, "Automatic rebalancing".

use tracing::{info, warn};

use super::Ctx;
use crate::migrate::auto::AutoRebalancer;

pub(super) async fn rebalance_loop(ctx: Ctx) {
    let s = &ctx.services;
    let cfg = ctx.config.cluster.auto_rebalance.clone();
    info!(node = %s.node.id, interval_s = cfg.interval.as_secs(), max_moves = cfg.max_moves,
          tolerance = %cfg.tolerance, "automatic rebalance is on");
    let mut auto = AutoRebalancer::default();
    loop {
        let wait = auto.wait(&cfg);
        tokio::select! {
            () = ctx.loops.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = auto.round(s, &cfg, &ctx.loops).await {
            warn!(node = %s.node.id, error = %format!("{e:#}"), "automatic rebalance round failed");
        }
    }
}
