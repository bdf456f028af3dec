use chrono::Utc;
use clap::Subcommand;
use serde_json::json;

use super::admin::{open_store, Access};
use super::Cli;
use crate::store::NodeRecord;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes registered in the store: state, lease, capacity, load, health,
    /// heartbeat age.
    List,
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn node_json(n: &NodeRecord, now: chrono::DateTime<Utc>) -> serde_json::Value {
    json!({
        "id": n.id, "http": n.http_addr, "irc": n.irc_addr, "state": n.state,
        "version": n.version, "schema_version": n.schema_version,
        "config_fingerprint": n.config_fingerprint, "source_ips": n.source_ips,
        "fd_limit": n.fd_limit, "fd_budget": n.fd_budget,
        "users": n.health.users, "sessions": n.health.sessions,
        "sessions_per_network": n.health.sessions_per_network,
        "sessions_per_ip": n.health.sessions_per_ip,
        "loop_lag_ms": n.health.loop_lag_ms, "rss_bytes": n.health.rss_bytes,
        "heartbeat_age_secs": secs((now - n.heartbeat_at).num_milliseconds()),
        "lease_remaining_secs": secs((n.lease_expires_at - now).num_milliseconds()),
    })
}

pub async fn run(cli: &Cli, cmd: &NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List => {
            let store = open_store(cli, Access::Read).await?;
            let now = Utc::now();
            let nodes = store.nodes().await?;
            if cli.json {
                let rows: Vec<_> = nodes.iter().map(|n| node_json(n, now)).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<10} {:<26} {:<20} {:<8} {:<7} {:>6} {:>5} {:>8} {:>7} {:>7} {:>8} {:<16} {:<17} {:>9} {:>8}",
                "NODE", "HTTP", "IRC", "STATE", "VERSION", "SCHEMA", "USERS", "SESSIONS", "FDS",
                "LAG", "RSS", "CONFIG", "SOURCE IPS", "HEARTBEAT", "LEASE"
            );
            for n in &nodes {
                println!(
                    "{:<10} {:<26} {:<20} {:<8} {:<7} {:>6} {:>5} {:>8} {:>7} {:>5}ms {:>6}M {:<16} {:<17} {:>7.1}s {:>7.1}s",
                    n.id,
                    n.http_addr,
                    n.irc_addr,
                    n.state,
                    n.version,
                    n.schema_version,
                    n.health.users,
                    n.health.sessions,
                    n.fd_budget,
                    n.health.loop_lag_ms,
                    n.health.rss_bytes / (1024 * 1024),
                    n.config_fingerprint,
                    n.source_ips.join(","),
                    secs((now - n.heartbeat_at).num_milliseconds()),
                    secs((n.lease_expires_at - now).num_milliseconds()),
                );
                for (net, k) in &n.health.sessions_per_network {
                    println!("{:<10}   network {net}: {k} sessions", "");
                }
                for (ip, k) in &n.health.sessions_per_ip {
                    println!("{:<10}   source {ip}: {k} sessions", "");
                }
            }
        }
    }
    Ok(())
}
