use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use serde_json::json;

use super::admin::open_store;
use super::Cli;
use crate::admin;
use crate::irc::Casemapping;
use crate::store::SearchQuery;

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[arg(long)]
    user: String,
    /// Words to find (all of them).
    query: String,
    #[arg(long)]
    network: Option<String>,
    /// A channel or query name.
    #[arg(long)]
    buffer: Option<String>,
    /// Only messages from this nick.
    #[arg(long)]
    sender: Option<String>,
    /// From this time on (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    from: Option<String>,
    /// Up to this time (RFC 3339 or YYYY-MM-DD, inclusive).
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: i64,
}

fn parse_time(s: &str, end_of_day: bool) -> anyhow::Result<DateTime<Utc>> {
    if let Some(t) = crate::irc::time::parse(s) {
        return Ok(t);
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("invalid time {s:?}: use 2026-11-22 or 2026-11-22T10:00:00Z"))?;
    let t = if end_of_day {
        d.and_hms_milli_opt(23, 59, 59, 999)
    } else {
        d.and_hms_opt(0, 0, 0)
    };
    Ok(t.expect("valid time").and_utc())
}

pub async fn run(cli: &Cli, args: &SearchArgs) -> anyhow::Result<()> {
    // Reading the backlog needs no running node: the store is the truth.
    let store = &open_store(cli).await?;
    let user = admin::find_user(store, &args.user).await?;
    let networks = store.networks(user.id).await?;
    let network = match &args.network {
        Some(name) => Some(
            networks
                .iter()
                .find(|n| &n.name == name)
                .ok_or_else(|| anyhow::anyhow!("user {:?} has no network {name:?}", args.user))?
                .id,
        ),
        None => None,
    };
    let q = SearchQuery {
        user: user.id,
        text: args.query.clone(),
        network,
        buffer_key: args
            .buffer
            .as_ref()
            .map(|b| Casemapping::Rfc1459.fold(b.as_bytes())),
        sender: args.sender.clone(),
        from: args
            .from
            .as_deref()
            .map(|s| parse_time(s, false))
            .transpose()?,
        to: args
            .to
            .as_deref()
            .map(|s| parse_time(s, true))
            .transpose()?,
        before: None,
        limit: args.limit.clamp(1, 10_000),
    };
    let results = store.search(&q).await?;
    let net_name = |id| {
        networks
            .iter()
            .find(|n| n.id == id)
            .map_or("?", |n| n.name.as_str())
    };
    if cli.json {
        let rows: Vec<_> = results
            .iter()
            .map(|m| {
                json!({
                    "id": m.seq,
                    "time": crate::irc::time::format(m.time),
                    "network": net_name(m.network_id),
                    "buffer": crate::irc::decode(&m.buffer),
                    "sender": m.sender,
                    "kind": m.command,
                    "text": m.text,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if results.is_empty() {
        eprintln!("no messages match {:?}", args.query);
    }
    for m in &results {
        let who = match m.command.as_str() {
            "ACTION" => format!("* {}", m.sender),
            "PRIVMSG" => format!("<{}>", m.sender),
            "NOTICE" => format!("-{}-", m.sender),
            other => format!("[{}] {}", other.to_lowercase(), m.sender),
        };
        println!(
            "{} {} {} {} {}",
            m.time.format("%Y-%m-%d %H:%M:%S"),
            net_name(m.network_id),
            crate::irc::decode(&m.buffer),
            who,
            m.text
        );
    }
    Ok(())
}
