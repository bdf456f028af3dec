//! The health watch after each batch: a target is degraded when it stopped
//! heartbeating or its event loop lags (from the node list), or when its `/metrics`
//! show memory running short, or throttle rejections or store write errors since the
//! baseline taken before the first batch.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Options;
use crate::store::{NodeRecord, Store};

/// What the health watch reads off a node's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals {
    /// `ferry_upstream_throttled_total` + `ferry_upstream_no_slot_total`, since the
    /// node started.
    pub rejections: u64,
    /// `ferry_store_write_errors_total`, since the node started.
    pub write_errors: u64,
    /// `ferry_memory_available_bytes`.
    pub mem_available: Option<u64>,
}

/// Each node's [`Signals`]; `None` when it does not answer.
pub async fn signals(nodes: &[NodeRecord]) -> BTreeMap<String, Option<Signals>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let asks = nodes.iter().map(|n| {
        let http = http.clone();
        async move {
            let text = async {
                http.get(format!("{}/metrics", n.admin_url.trim_end_matches('/')))
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await
            }
            .await
            .ok();
            let v = text.map(|t| {
                let sum = |names: &[&str]| {
                    t.lines()
                        .filter(|l| names.iter().any(|n| metric_name(l) == *n))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum::<f64>()
                };
                Signals {
                    rejections: sum(&[
                        "ferry_upstream_throttled_total",
                        "ferry_upstream_no_slot_total",
                    ]) as u64,
                    write_errors: sum(&["ferry_store_write_errors_total"]) as u64,
                    mem_available: t
                        .lines()
                        .any(|l| metric_name(l) == "ferry_memory_available_bytes")
                        .then(|| sum(&["ferry_memory_available_bytes"]) as u64),
                }
            });
            (n.id.clone(), v)
        }
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// The metric name of a sample line (`name{labels} value` or `name value`).
fn metric_name(line: &str) -> &str {
    if line.starts_with('#') {
        return "";
    }
    line.split(['{', ' ']).next().unwrap_or("")
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
    let now_signals = signals(&nodes).await;
    for (id, s) in &now_signals {
        let Some(s) = s else {
            return Ok(Some(format!("target {id} does not answer /metrics")));
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
