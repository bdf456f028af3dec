//! What `ferry migrate` shows: a plan before it runs, and `status` of one migration
//! or all (figures, per network, throttle rejections, failed users).

use anyhow::Context;

use crate::cli::Cli;
use crate::migrate::plan::{human_duration, Plan};
use crate::migrate::{self, MoveState};
use crate::store::Store;

pub(super) fn print_plan(cli: &Cli, plan: &Plan) {
    if cli.json {
        println!("{}", serde_json::json!({"plan": plan}));
        return;
    }
    let mut per: std::collections::BTreeMap<(&str, i64), usize> = Default::default();
    for u in &plan.users {
        *per.entry((u.to.as_str(), u.batch)).or_default() += 1;
    }
    println!("plan: {} users", plan.users.len());
    for ((to, b), n) in &per {
        let label = if *b == 0 {
            "canary".to_owned()
        } else {
            format!("batch {b}")
        };
        println!("  {label:>9} → {to}: {n} users");
    }
    for s in &plan.slots {
        println!(
            "  slots on {} for {} from {}: {} held + {} planned{}",
            s.target,
            s.network,
            s.source_ip,
            s.held,
            s.planned,
            s.limit
                .map(|l| format!(" of {l} per IP"))
                .unwrap_or_default()
        );
    }
    for b in &plan.bounds {
        println!("  {}", b.text);
    }
    println!(
        "  ETA the limits impose: {}",
        human_duration(plan.eta_seconds)
    );
    for p in &plan.problems {
        println!("  cannot fit: {p}");
    }
}

pub(super) async fn status(cli: &Cli, store: &Store, id: Option<i64>) -> anyhow::Result<()> {
    let list = match id {
        Some(id) => vec![store
            .migration(id)
            .await?
            .with_context(|| format!("no migration {id}"))?],
        None => store.migrations().await?,
    };
    let mut out = Vec::new();
    for m in &list {
        let users = store.migration_users(m.id).await?;
        let f = migrate::figures(m, &users);
        if !cli.json {
            println!(
                "migration {} ({} {} → {}): {}{}",
                m.id,
                m.kind,
                m.source_node,
                m.targets.join(","),
                m.state,
                if m.note.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", m.note)
                }
            );
            println!(
                "  {} users: {} moved, {} failed, {} rolled back, {} pending; downtime p50 {} ms, p99 {} ms, max {} ms; elapsed {}",
                f.users, f.moved, f.failed, f.rolled_back, f.pending,
                f.downtime_p50_ms.unwrap_or(0), f.downtime_p99_ms.unwrap_or(0), f.downtime_max_ms.unwrap_or(0),
                human_duration(f.elapsed_ms.unwrap_or(0) as f64 / 1000.0)
            );
            if f.failed > 0 {
                println!(
                    "  of the failed: {} back on their source, {} not",
                    f.failed_back_on_source,
                    f.failed - f.failed_back_on_source
                );
            }
        }
        let nets = migrate::network_figures(store, m, &users).await?;
        let involved: Vec<_> = store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.id == m.source_node || m.targets.contains(&n.id))
            .collect();
        let throttle = migrate::throttle_rejections(m, &involved).await;
        if !cli.json {
            for (net, nf) in &nets {
                println!(
                    "  network {net}: {} users: {} moved, {} failed, {} rolled back; downtime p50 {} ms, p99 {} ms",
                    nf.users,
                    nf.moved,
                    nf.failed,
                    nf.rolled_back,
                    nf.downtime_p50_ms.unwrap_or(0),
                    nf.downtime_p99_ms.unwrap_or(0)
                );
            }
            println!(
                "  throttle rejections {}: {}",
                if m.rejections_baseline.is_empty() {
                    "since node start"
                } else {
                    "during the migration"
                },
                throttle
                    .iter()
                    .map(|(n, v)| format!("{n} {}", v.map_or("?".to_owned(), |v| v.to_string())))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if id.is_some() {
                for u in users
                    .iter()
                    .filter(|u| u.state == MoveState::Failed.as_str())
                {
                    println!("  failed {}: {}", u.user_name, u.error);
                }
            }
        }
        out.push(serde_json::json!({"migration": m, "figures": f, "networks": nets, "throttle_rejections": throttle, "users": if id.is_some() { serde_json::to_value(&users)? } else { serde_json::Value::Null }}));
    }
    if cli.json {
        println!("{}", serde_json::Value::Array(out));
    }
    Ok(())
}
