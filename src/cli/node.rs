//! `ferry node …`: the nodes registered in the store.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use serde_json::json;

use super::admin::{open_store, Access};
use super::Cli;
use crate::cluster::peer::PeerStatus;
use crate::cluster::Snapshot;
use crate::migrate::AdminClient;
use crate::store::{node_state, NodeRecord, Store};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes registered in the store: state, lease, capacity, load, health,
    /// free session slots per configured network, heartbeat age. A node whose lease ran out shows as dead, without figures, or as
    /// store-cut when it still answers its admin API: it runs, but cannot reach the
    /// store (it keeps or has fenced its sessions, see docs/operations.md).
    List,
    /// Remove a dead node's record, once its users were adopted by live nodes. A live
    /// node is refused: stop it (it leaves the list itself) or drain it first.
    Remove {
        /// The node's id (as in `ferry node list`).
        node: String,
    },
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Whether the node's figures are its last words rather than its state: it was
/// declared dead, or its lease ran out unrenewed.
fn is_dead(n: &NodeRecord, now: chrono::DateTime<Utc>) -> bool {
    n.state == node_state::DEAD || n.lease_expires_at < now
}

/// The state shown for a node whose lease ran out while it still answers its peers.
pub const STORE_CUT: &str = "store-cut";

/// How long `node list` waits for a lapsed node's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks each lapsed (or dead) node whether it runs: what it answers peers
/// (`GET /api/admin/peer`). `None` for live nodes, for ones that do not answer, and
/// without the secret key.
async fn probe_lapsed(
    store: &Store,
    nodes: &[NodeRecord],
    now: chrono::DateTime<Utc>,
) -> Vec<Option<PeerStatus>> {
    let probes = nodes.iter().map(|n| async move {
        if !is_dead(n, now) {
            return None;
        }
        let client = AdminClient::new(n, store.secret_key(), PROBE_TIMEOUT).ok()?;
        let call = client.call::<PeerStatus>(reqwest::Method::GET, "/peer", None::<&()>);
        match tokio::time::timeout(PROBE_TIMEOUT, call).await {
            Ok(Ok(Some(st))) if st.node == n.id => Some(st),
            _ => None,
        }
    });
    futures::future::join_all(probes).await
}

/// Per configured limits key: free session slots on the node (negative: connects
/// queued beyond its slots) with the sessions it holds and the connects waiting there.
fn slots_json(n: &NodeRecord, snap: &Snapshot) -> serde_json::Value {
    let load = &n.health.key_load;
    let rows: serde_json::Map<String, serde_json::Value> = snap
        .free_slots(n)
        .into_iter()
        .map(|(key, free)| {
            let l = load.get(&key).copied().unwrap_or_default();
            let row = json!({ "free": free, "held": l.held, "waiting": l.waiting });
            (key, row)
        })
        .collect();
    serde_json::Value::Object(rows)
}

fn node_json(
    n: &NodeRecord,
    snap: &Snapshot,
    now: chrono::DateTime<Utc>,
    cut: Option<&PeerStatus>,
) -> serde_json::Value {
    let dead = is_dead(n, now);
    // A dead node's load figures are stale: shown as null, not as its last report.
    let live = |v: serde_json::Value| if dead { serde_json::Value::Null } else { v };
    let state = match (dead, cut) {
        (false, _) => n.state.as_str(),
        (true, Some(_)) => STORE_CUT,
        (true, None) => node_state::DEAD,
    };
    let users = match cut {
        Some(st) => json!(st.users),
        None => live(json!(n.health.users)),
    };
    json!({
        "id": n.id, "http": n.http_addr, "irc": n.irc_addr,
        "state": state,
        "store_age_secs": cut.and_then(|st| st.store_age_ms).map(|ms| ms as f64 / 1000.0),
        "fenced": cut.map(|st| st.fenced),
        "version": n.version, "schema_version": n.schema_version,
        "config_fingerprint": n.config_fingerprint, "source_ips": n.source_ips,
        "fd_limit": n.fd_limit, "fd_budget": n.fd_budget,
        "users": users, "sessions": live(json!(n.health.sessions)),
        "sessions_per_network": live(json!(n.health.sessions_per_network)),
        "sessions_per_ip": live(json!(n.health.sessions_per_ip)),
        "loop_lag_ms": live(json!(n.health.loop_lag_ms)),
        "rss_bytes": live(json!(n.health.rss_bytes)),
        "slots": live(slots_json(n, snap)),
        "heartbeat_age_secs": secs((now - n.heartbeat_at).num_milliseconds()),
        "lease_remaining_secs": secs((n.lease_expires_at - now).num_milliseconds()),
    })
}

pub async fn run(cli: &Cli, cmd: &NodeCommand) -> anyhow::Result<()> {
    // Both read what is there: removing a node record never creates a store.
    let store = open_store(cli, Access::Read).await?;
    match cmd {
        NodeCommand::List => list(cli, &store).await,
        NodeCommand::Remove { node } => remove(cli, &store, node).await,
    }
}

async fn list(cli: &Cli, store: &Store) -> anyhow::Result<()> {
    let now = Utc::now();
    let snap = Snapshot::load(store).await?;
    let nodes = &snap.nodes;
    let cut = probe_lapsed(store, nodes, now).await;
    if cli.json {
        let rows: Vec<_> = nodes
            .iter()
            .zip(&cut)
            .map(|(n, c)| node_json(n, &snap, now, c.as_ref()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<10} {:<26} {:<20} {:<9} {:<7} {:>6} {:>5} {:>8} {:>7} {:>7} {:>8} {:<16} {:<17} {:>9} {:>8}",
        "NODE", "HTTP", "IRC", "STATE", "VERSION", "SCHEMA", "USERS", "SESSIONS", "FDS",
        "LAG", "RSS", "CONFIG", "SOURCE IPS", "HEARTBEAT", "LEASE"
    );
    for (n, cut) in nodes.iter().zip(&cut) {
        let dead = is_dead(n, now);
        let fig = |v: String| if dead { "-".to_owned() } else { v };
        let state = match (dead, cut) {
            (false, _) => n.state.as_str(),
            (true, Some(_)) => STORE_CUT,
            (true, None) => node_state::DEAD,
        };
        let users = match cut {
            Some(st) => st.users.to_string(),
            None => fig(n.health.users.to_string()),
        };
        println!(
            "{:<10} {:<26} {:<20} {:<9} {:<7} {:>6} {:>5} {:>8} {:>7} {:>7} {:>8} {:<16} {:<17} {:>7.1}s {:>8}",
            n.id,
            n.http_addr,
            n.irc_addr,
            state,
            n.version,
            n.schema_version,
            users,
            fig(n.health.sessions.to_string()),
            n.fd_budget,
            fig(format!("{}ms", n.health.loop_lag_ms)),
            fig(format!("{}M", n.health.rss_bytes / (1024 * 1024))),
            n.config_fingerprint,
            n.source_ips.join(","),
            secs((now - n.heartbeat_at).num_milliseconds()),
            if dead {
                "gone".to_owned()
            } else {
                format!("{:.1}s", secs((n.lease_expires_at - now).num_milliseconds()))
            },
        );
        if dead {
            continue;
        }
        for (net, k) in &n.health.sessions_per_network {
            println!("{:<10}   network {net}: {k} sessions", "");
        }
        for (ip, k) in &n.health.sessions_per_ip {
            println!("{:<10}   source {ip}: {k} sessions", "");
        }
        for (key, free) in snap.free_slots(n) {
            let l = n.health.key_load.get(&key).copied().unwrap_or_default();
            println!(
                "{:<10}   slots {key}: {free} free ({} held, {} waiting)",
                "", l.held, l.waiting
            );
        }
    }
    Ok(())
}

async fn remove(cli: &Cli, store: &Store, id: &str) -> anyhow::Result<()> {
    let nodes = store.nodes().await?;
    let node = nodes
        .iter()
        .find(|n| n.id == id)
        .with_context(|| format!("no node {id:?} in the node list"))?;
    if store.node_is_live(id).await? {
        let left = secs((node.lease_expires_at - Utc::now()).num_milliseconds()).max(0.0);
        anyhow::bail!(
            "node {id:?} is alive (state {}, lease valid for another {left:.0}s); stop it \
             (it leaves the node list itself) or move its users off it first \
             (`ferry migrate drain {id}`)",
            node.state
        );
    }
    let owned = store.owned_users(id).await?;
    if !owned.is_empty() {
        let names: Vec<&str> = owned.iter().take(5).map(|o| o.user_name.as_str()).collect();
        anyhow::bail!(
            "node {id:?} still owns {} users ({}{}); a live node adopts them once the dead \
             node's lease is over its margin (start a node if none runs), then try again",
            owned.len(),
            names.join(", "),
            if owned.len() > names.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    store.remove_node(id).await?;
    // Its last session counts stop weighing on the cluster caps at once.
    store.report_session_counts(id, &[], Utc::now()).await?;
    if cli.json {
        println!("{}", json!({ "removed": id }));
    } else {
        println!("removed node {id}");
    }
    Ok(())
}
