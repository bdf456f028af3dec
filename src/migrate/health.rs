//! The health watch after each batch: a target is degraded when it stopped
//! heartbeating or its event loop lags (from the node list), or when its own figures
//! (`GET /api/admin/health`, typed as [`Signals`]) show memory running short, or
//! throttle rejections or store write errors since the baseline taken before the
//! first batch.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{AdminClient, Options, Signals};
use crate::secrets::SecretKey;
use crate::store::{NodeRecord, Store};

/// Each node's [`Signals`] (`GET /api/admin/health`); `None` when it does not answer.
pub async fn signals(
    nodes: &[NodeRecord],
    key: Option<&SecretKey>,
) -> BTreeMap<String, Option<Signals>> {
    let asks = nodes.iter().map(|n| async move {
        let ask = async {
            let client = AdminClient::new(n, key, Duration::from_secs(2))?;
            client
                .call::<Signals>(reqwest::Method::GET, "/health", None::<&()>)
                .await?
                .ok_or_else(|| anyhow::anyhow!("node {}: no answer", n.id))
        };
        let s = ask.await.map_err(|e| {
            tracing::debug!(node = %n.id, error = %e, "health signals not read");
        });
        (n.id.clone(), s.ok())
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// A target is degraded when it stopped heartbeating, its event loop lags, its system
/// runs short of memory, or since `baseline` (taken before the first batch) the IRC
/// servers rejected its connects or its store writes failed.
pub(super) async fn degraded(
    store: &Store,
    targets: &[String],
    opts: &Options,
    baseline: &BTreeMap<String, Signals>,
) -> anyhow::Result<Option<String>> {
    let live = store.live_active_nodes().await?;
    let nodes: Vec<NodeRecord> = store
        .nodes()
        .await?
        .into_iter()
        .filter(|n| targets.contains(&n.id))
        .collect();
    for n in &nodes {
        if !live.contains(&n.id) {
            return Ok(Some(format!("target {} is not live ({})", n.id, n.state)));
        }
        if n.health.loop_lag_ms > opts.max_loop_lag_ms {
            return Ok(Some(format!(
                "target {} event loop lags {} ms",
                n.id, n.health.loop_lag_ms
            )));
        }
    }
    let now_signals = signals(&nodes, store.secret_key()).await;
    for (id, s) in &now_signals {
        let Some(s) = s else {
            return Ok(Some(format!(
                "target {id} does not answer /api/admin/health"
            )));
        };
        let before = baseline.get(id).copied().unwrap_or_default();
        let rejected = s.rejections.saturating_sub(before.rejections);
        if rejected > 0 {
            return Ok(Some(format!(
                "target {id} met {rejected} throttle rejection(s) from IRC servers during \
                 this migration"
            )));
        }
        let errors = s.write_errors.saturating_sub(before.write_errors);
        if errors > 0 {
            return Ok(Some(format!(
                "target {id} had {errors} store write error(s) during this migration"
            )));
        }
        if let Some(avail) = s.mem_available {
            if avail < opts.min_free_memory_mib * 1024 * 1024 {
                return Ok(Some(format!(
                    "target {id} has {} MiB of memory available (less than {} MiB)",
                    avail / (1024 * 1024),
                    opts.min_free_memory_mib
                )));
            }
        }
    }
    Ok(None)
}
