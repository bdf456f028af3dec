//! `ferry upgrade`: replaces a running node's process with a new binary in place (see
//! `crate::upgrade` and docs/operations.md, "Upgrading a node in place"). The node is
//! found in the store's node list, like the other admin commands, and asked through
//! its admin API; the same happens on SIGUSR2 to `ferry serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::Args;

use super::admin::{open_store, Access};
use super::Cli;
use crate::migrate::{AdminClient, CallError};
use crate::upgrade::{Report, UpgradeRequest};

/// A node whose heartbeat is older than this is not running.
const LIVE: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The new binary [default: the path the node was started from, so replacing that
    /// file and running `ferry upgrade` is the whole procedure].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Seconds the new binary gets to answer its self-check, and again to start
    /// serving [default: 30].
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// The node to upgrade (its id in `ferry node list`) [default: the only running
    /// node].
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
}

pub async fn run(cli: &Cli, args: &UpgradeArgs) -> anyhow::Result<()> {
    let store = open_store(cli, Access::Read).await?;
    let now = Utc::now();
    let live: Vec<_> = store
        .nodes()
        .await?
        .into_iter()
        .filter(|n| {
            (now - n.heartbeat_at)
                .to_std()
                .map_or(true, |age| age < LIVE)
        })
        .collect();
    let node = match &args.node {
        Some(id) => live
            .into_iter()
            .find(|n| &n.id == id)
            .with_context(|| format!("no running node {id:?} on this store"))?,
        None => match live.len() {
            0 => anyhow::bail!("no node is running on this store"),
            1 => live.into_iter().next().unwrap_or_else(|| unreachable!()),
            _ => anyhow::bail!(
                "several nodes run on this store ({}): name one with --node",
                live.iter()
                    .map(|n| n.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let binary = match &args.binary {
        // The node resolves paths from its own directory: give it an absolute one.
        Some(p) => Some(std::path::absolute(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let req = UpgradeRequest {
        binary,
        timeout_secs: args.timeout,
    };
    // The check and the start each get the timeout; stopping the users takes a while.
    let patience = req.timeout() * 2 + Duration::from_secs(120);
    let client = AdminClient::new(&node, store.secret_key(), patience)?;
    let report: Report = match client
        .call(reqwest::Method::POST, "/upgrade", Some(&req))
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => anyhow::bail!("node {} answered without a report", node.id),
        Err(CallError::Refused { message, .. }) => {
            anyhow::bail!("upgrade of node {} failed: {message}", node.id)
        }
        Err(e) => return Err(e).context(format!("upgrading node {}", node.id)),
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "node {} upgraded: pid {} ({}) -> pid {} ({})",
        report.node, report.old.pid, report.old.version, report.new.pid, report.new.version
    );
    let moved: Vec<String> = report
        .moved
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    println!("sockets moved: {}", moved.join(", "));
    let r = report.reconnected;
    println!(
        "reconnected: {} upstream connection(s), {} client attachment(s), {} websocket(s)",
        r.upstream, r.clients, r.websocket
    );
    println!(
        "pause {:.1} ms (barrier to reading again; accepts paused {:.1} ms), total {:.1} ms",
        report.pause_ms, report.accept_pause_ms, report.total_ms
    );
    if let Some(p) = report.user_pause {
        println!(
            "each user's own pause (park to resumed), over {} user(s): p50 {:.1} ms, p99 {:.1} \
             ms, max {:.1} ms",
            p.users, p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    Ok(())
}
