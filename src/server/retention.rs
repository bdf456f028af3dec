//! Backlog retention: every `retention_interval` the store deletes what users'
//! retention settings no longer keep, then refreshes the planner's statistics.

use chrono::Utc;
use tracing::{info, warn};

use super::Ctx;

pub(super) async fn retention(ctx: Ctx) {
    let s = &ctx.services;
    let mut tick = tokio::time::interval(ctx.config.retention_interval);
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            _ = tick.tick() => match s.store.enforce_retention(Utc::now()).await {
                Ok(n) => {
                    if n > 0 {
                        info!(deleted = n, "backlog retention");
                    }
                    // Keep the planner's statistics fresh as the backlog grows.
                    if let Err(e) = s.store.optimize().await {
                        warn!(error = %e, "refreshing planner statistics failed");
                    }
                }
                Err(e) => warn!(error = %e, "backlog retention failed"),
            },
        }
    }
}
