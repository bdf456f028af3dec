//! `ferry limits …`: per-network rate configuration, through the running node's
//! admin API (which applies it at once; other nodes reload within seconds), or the
//! store when no node runs.

use clap::{Args, Subcommand};

use super::admin::AdminOps;
use super::Cli;
use crate::limits::LimitsSpec;

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Set (create or replace) the limits of a network, named by host, parent domain
    /// or network name.
    Set(SetArgs),
    /// List the configured limits.
    List,
    /// Remove a network's limits (it falls back to the defaults: no slot or connect
    /// caps, one outgoing line per two seconds after five).
    Remove {
        /// The key given to `ferry limits set`.
        #[arg(value_name = "HOST_OR_NETWORK")]
        key: String,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// A host (irc.libera.chat), a parent domain of a network's hosts (libera.chat)
    /// or a network name.
    #[arg(value_name = "HOST_OR_NETWORK")]
    key: String,
    /// Upstream sessions allowed per source IP.
    #[arg(long, value_name = "N")]
    sessions_per_ip: u32,
    /// New connections per minute per source IP, after the burst.
    #[arg(long, value_name = "R")]
    connects_per_minute: f64,
    /// Connections allowed back to back before the rate applies (default 1).
    #[arg(long, value_name = "B")]
    burst: Option<u32>,
    /// Outgoing lines per second per connection (default: the node's, 0.5).
    #[arg(long, value_name = "M")]
    messages_per_second: Option<f64>,
    /// Outgoing lines sent at once before pacing starts (default: the node's, 5).
    #[arg(long, value_name = "K")]
    message_burst: Option<u32>,
    /// Sessions allowed on this network across the whole cluster.
    #[arg(long, value_name = "T")]
    sessions_total: Option<u32>,
    /// New connections per minute to this network from the whole cluster, all nodes
    /// together (shared through the store).
    #[arg(long, value_name = "R")]
    connects_per_minute_total: Option<f64>,
    /// Set the limits even though the key matches no network yet (networks added
    /// later fall under it).
    #[arg(long)]
    force: bool,
}

impl LimitsCommand {
    /// Whether the command only reads (then it never creates a store).
    pub fn access(&self) -> super::admin::Access {
        match self {
            LimitsCommand::List => super::admin::Access::Read,
            _ => super::admin::Access::Write,
        }
    }
}

pub async fn run(cli: &Cli, cmd: &LimitsCommand, ops: &impl AdminOps) -> anyhow::Result<()> {
    match cmd {
        LimitsCommand::Set(a) => {
            let spec = LimitsSpec {
                sessions_per_ip: a.sessions_per_ip,
                connects_per_minute: a.connects_per_minute,
                burst: a.burst,
                messages_per_second: a.messages_per_second,
                message_burst: a.message_burst,
                sessions_total: a.sessions_total,
                connects_per_minute_total: a.connects_per_minute_total,
            };
            let limits = spec
                .to_limits(&a.key, chrono::Utc::now())
                .map_err(anyhow::Error::msg)?;
            // A key that matches no network limits nothing: most likely a typo, which
            // would otherwise pass silently. Refused unless --force says it is meant
            // for networks still to be added.
            if !a.force {
                let store = super::admin::open_store(cli, super::admin::Access::Read).await?;
                if !crate::admin::limits_key_in_use(&store, &limits.key).await? {
                    anyhow::bail!(crate::admin::unused_limits_key(&limits.key));
                }
            }
            let view = ops.set_limits(&spec, &limits).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("set limits for {}: {}", view.key, describe(&view.spec));
            }
        }
        LimitsCommand::List => {
            let rows = ops.list_limits().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<24} {:>8} {:>9} {:>6} {:>9} {:>9} {:>7} {:>10}  UPDATED",
                "KEY", "PER-IP", "CONN/MIN", "BURST", "MSG/S", "MSG-BURST", "TOTAL", "CONN/MIN*"
            );
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            // TOTAL and CONN/MIN* are for the whole cluster.
            for r in rows {
                let s = &r.spec;
                println!(
                    "{:<24} {:>8} {:>9} {:>6} {:>9} {:>9} {:>7} {:>10}  {}",
                    r.key,
                    s.sessions_per_ip,
                    s.connects_per_minute,
                    s.burst.unwrap_or(1),
                    opt(s.messages_per_second.map(|v| v.to_string())),
                    opt(s.message_burst.map(|v| v.to_string())),
                    opt(s.sessions_total.map(|v| v.to_string())),
                    opt(s.connects_per_minute_total.map(|v| v.to_string())),
                    r.updated_at
                );
            }
        }
        LimitsCommand::Remove { key } => {
            let key = key.trim().to_lowercase();
            ops.remove_limits(&key).await?;
            if !cli.json {
                println!("removed limits for {key}");
            }
        }
    }
    Ok(())
}

fn describe(s: &LimitsSpec) -> String {
    let mut out = format!(
        "{} sessions per source IP, {} connects per minute (burst {})",
        s.sessions_per_ip,
        s.connects_per_minute,
        s.burst.unwrap_or(1)
    );
    if let Some(m) = s.messages_per_second {
        out.push_str(&format!(", {m} messages per second"));
    }
    if let Some(k) = s.message_burst {
        out.push_str(&format!(" (burst {k})"));
    }
    if let Some(t) = s.sessions_total {
        out.push_str(&format!(", at most {t} sessions cluster-wide"));
    }
    if let Some(r) = s.connects_per_minute_total {
        out.push_str(&format!(", at most {r} connects a minute cluster-wide"));
    }
    out
}
