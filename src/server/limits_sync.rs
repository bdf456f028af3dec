//! Keeps the limiter in step with the cluster: limits set on any node take effect
//! here within one `limits_interval`, `sessions_total` sees the other nodes'
//! sessions (published only by nodes that have others: not on SQLite, whose lease is
//! the node's own), and connects pause while this node is `draining` (see
//! `Limiter::set_draining`).

use chrono::Utc;
use tracing::warn;

use super::Ctx;
use crate::services::Services;
use crate::store::node_state;

pub(super) async fn limits_sync(ctx: Ctx) {
    let s = &ctx.services;
    let mut tick = tokio::time::interval(ctx.config.limits_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = s.reload_limits().await {
                    warn!(node = %s.node.id, error = %e, "reloading network limits failed");
                }
                // Only other nodes read the counts a node publishes, and a node
                // whose lease is its own (SQLite) has none: publishing would only
                // take SQLite's one write lock from the writer every interval.
                if !s.lease.is_sole() {
                    if let Err(e) = sync_session_counts(s).await {
                        warn!(node = %s.node.id, error = %e, "syncing session counts failed");
                    }
                }
                if let Err(e) = sync_draining(s).await {
                    warn!(node = %s.node.id, error = %e, "reading this node's state failed");
                }
            }
        }
    }
}

/// Publishes this node's session counts and reads the other nodes' ones.
async fn sync_session_counts(s: &Services) -> anyhow::Result<()> {
    let counts: Vec<(String, String, u32)> = s
        .limiter
        .local_counts()
        .into_iter()
        .map(|c| {
            (
                c.key,
                c.source.map(|ip| ip.to_string()).unwrap_or_default(),
                c.sessions,
            )
        })
        .collect();
    let now = Utc::now();
    s.store
        .report_session_counts(&s.node.id, &counts, now)
        .await?;
    let all = s.store.session_counts().await?;
    s.limiter.set_remote_counts(&s.node.id, &all, now);
    Ok(())
}

/// Pauses the connects of this node's users while the store says it drains, and
/// resumes them when it no longer does (the drain was aborted or rolled back).
async fn sync_draining(s: &Services) -> anyhow::Result<()> {
    let me = s
        .store
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.id == *s.node.id);
    if let Some(me) = me {
        s.limiter.set_draining(me.state == node_state::DRAINING);
    }
    Ok(())
}
