//! `GET /metrics`: the node's state in the Prometheus text format (version 0.0.4),
//! rendered by hand (it is simple enough not to need a crate).
//!
//! Gauges are computed per scrape from the user actors' status; counters come
//! from the store writer, the node-wide upstream counters and the user actors'
//! counters (`UserConfig::upstream_stats`, `UserConfig::counters`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::services::Services;
use crate::user::{ConnState, NetworkStatus};

const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn metrics(State(services): State<Services>) -> impl IntoResponse {
    let body = render(&services).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// The statuses of every user running on this node (actors that do not answer in
/// time are left out).
async fn statuses(services: &Services) -> Vec<NetworkStatus> {
    let users = services.store.list_users().await.unwrap_or_default();
    let asks = users
        .iter()
        .filter_map(|u| services.users.get(u.id))
        .map(|h| async move {
            tokio::time::timeout(STATUS_TIMEOUT, h.status())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One metric family: `# HELP`, `# TYPE` and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn state_name(s: &ConnState) -> &'static str {
    match s {
        ConnState::Connecting { .. } => "connecting",
        ConnState::Connected => "connected",
        ConnState::Disconnected { .. } => "disconnected",
        ConnState::Stopped => "stopped",
    }
}

/// Resident set size of this process, from `/proc` (Linux only).
fn rss_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}

pub async fn render(services: &Services) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "ferry_users_running",
        "gauge",
        "User actors running on this node.",
        &[("", services.users.count() as f64)],
    );

    let statuses = statuses(services).await;
    let mut by_state: BTreeMap<&str, f64> = ["connecting", "connected", "disconnected", "stopped"]
        .into_iter()
        .map(|s| (s, 0.0))
        .collect();
    for s in &statuses {
        *by_state.entry(state_name(&s.state)).or_default() += 1.0;
    }
    let labels: Vec<(String, f64)> = by_state
        .iter()
        .map(|(state, n)| (format!("{{state=\"{state}\"}}"), *n))
        .collect();
    let samples: Vec<(&str, f64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    family(
        &mut out,
        "ferry_upstreams",
        "gauge",
        "Upstream connections by state.",
        &samples,
    );
    let clients: usize = statuses.iter().map(|s| s.clients).sum();
    family(
        &mut out,
        "ferry_downstream_clients",
        "gauge",
        "IRC clients attached to this node.",
        &[("", clients as f64)],
    );

    let w = services.writer.stats();
    for (name, kind, help, value) in [
        (
            "ferry_store_write_batches_total",
            "counter",
            "Backlog transactions committed by the store writer.",
            w.batches as f64,
        ),
        (
            "ferry_store_write_messages_total",
            "counter",
            "Messages committed by the store writer.",
            w.messages as f64,
        ),
        (
            "ferry_store_write_errors_total",
            "counter",
            "Failed commit attempts of the store writer.",
            w.errors as f64,
        ),
        (
            "ferry_store_write_dropped_total",
            "counter",
            "Messages the store writer dropped.",
            w.dropped as f64,
        ),
        (
            "ferry_store_last_batch_seconds",
            "gauge",
            "How long the last commit of the store writer took.",
            w.last_batch.as_secs_f64(),
        ),
        (
            "ferry_store_write_queue",
            "gauge",
            "Messages queued for the store writer.",
            services.writer.queued() as f64,
        ),
    ] {
        family(&mut out, name, kind, help, &[("", value)]);
    }
    let up = &services.users.config().upstream_stats;
    let c = &services.users.config().counters;
    let get =
        |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
    for (name, help, value) in [
        (
            "ferry_upstream_lines_in_total",
            "Lines received from IRC servers.",
            get(&up.lines_in),
        ),
        (
            "ferry_upstream_lines_out_total",
            "Lines sent to IRC servers.",
            get(&up.lines_out),
        ),
        (
            "ferry_upstream_parse_errors_total",
            "Lines from IRC servers that were not IRC messages (skipped).",
            get(&up.parse_errors),
        ),
        (
            "ferry_upstream_overlong_total",
            "Lines from IRC servers over the length limit (skipped).",
            get(&up.overlong),
        ),
        (
            "ferry_upstream_reconnects_total",
            "Upstream dials after the first one.",
            get(&up.reconnects),
        ),
        (
            "ferry_upstream_throttled_total",
            "Connections a server ended as throttled (too fast).",
            get(&up.throttled),
        ),
        (
            "ferry_upstream_no_slot_total",
            "Connections a server refused: too many from our address.",
            get(&up.too_many_connections),
        ),
        (
            "ferry_messages_stored_total",
            "Lines handed to the backlog writer (per buffer).",
            get(&c.stored),
        ),
        (
            "ferry_messages_relayed_total",
            "Lines queued to attached clients (per client).",
            get(&c.relayed),
        ),
        (
            "ferry_slow_clients_total",
            "Clients detached because they could not keep up.",
            get(&c.slow_clients),
        ),
    ] {
        family(&mut out, name, "counter", help, &[("", value)]);
    }
    migrations(&mut out, services).await;
    if let Some(rss) = rss_bytes() {
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            &[("", rss)],
        );
    }
    if let Some(avail) = crate::cluster::mem_available() {
        family(
            &mut out,
            "ferry_memory_available_bytes",
            "gauge",
            "Memory the system can still give processes (MemAvailable).",
            &[("", avail as f64)],
        );
    }
    out
}

/// How many of the latest migrations `/metrics` shows (labels stay bounded).
const MIGRATIONS_SHOWN: usize = 5;

/// Per migration and per network: users by state, downtime percentiles (the store's
/// view, so every node reports the same figures).
async fn migrations(out: &mut String, services: &Services) {
    let Ok(list) = services.store.migrations().await else {
        return;
    };
    let mut users: Vec<(String, f64)> = Vec::new();
    let mut downtime: Vec<(String, f64)> = Vec::new();
    let mut net_users: Vec<(String, f64)> = Vec::new();
    let mut net_downtime: Vec<(String, f64)> = Vec::new();
    for m in list.iter().take(MIGRATIONS_SHOWN) {
        let Ok(mu) = services.store.migration_users(m.id).await else {
            continue;
        };
        let base = format!("migration=\"{}\",kind=\"{}\"", m.id, m.kind);
        let f = crate::migrate::figures(m, &mu);
        let states = |f: &crate::migrate::Figures| {
            [
                ("moved", f.moved),
                ("failed", f.failed),
                ("rolled_back", f.rolled_back),
                ("pending", f.pending),
            ]
        };
        for (state, n) in states(&f) {
            users.push((format!("{{{base},state=\"{state}\"}}"), n as f64));
        }
        for (q, v) in [("0.5", f.downtime_p50_ms), ("0.99", f.downtime_p99_ms)] {
            if let Some(v) = v {
                downtime.push((format!("{{{base},quantile=\"{q}\"}}"), v as f64 / 1000.0));
            }
        }
        let Ok(nets) = crate::migrate::network_figures(&services.store, m, &mu).await else {
            continue;
        };
        for (net, nf) in &nets {
            let net = net.replace(['"', '\\', '\n'], "_");
            for (state, n) in states(nf) {
                net_users.push((
                    format!("{{{base},network=\"{net}\",state=\"{state}\"}}"),
                    n as f64,
                ));
            }
            for (q, v) in [("0.5", nf.downtime_p50_ms), ("0.99", nf.downtime_p99_ms)] {
                if let Some(v) = v {
                    net_downtime.push((
                        format!("{{{base},network=\"{net}\",quantile=\"{q}\"}}"),
                        v as f64 / 1000.0,
                    ));
                }
            }
        }
    }
    fn refs(v: &[(String, f64)]) -> Vec<(&str, f64)> {
        v.iter().map(|(l, x)| (l.as_str(), *x)).collect()
    }
    family(
        out,
        "ferry_migration_users",
        "gauge",
        "Users of a migration by state.",
        &refs(&users),
    );
    family(out, "ferry_migration_downtime_seconds", "gauge", "Per-user downtime (QUIT on the source to registered on the target) percentiles of a migration.", &refs(&downtime));
    family(
        out,
        "ferry_migration_network_users",
        "gauge",
        "Users of a migration by network (limits key) and state.",
        &refs(&net_users),
    );
    family(
        out,
        "ferry_migration_network_downtime_seconds",
        "gauge",
        "Per-user downtime percentiles of a migration by network.",
        &refs(&net_downtime),
    );
}
