//! What `ferry migrate` shows: a plan before it runs, and `status` of one migration
//! or all (figures, per network, throttle rejections, failed users).

use anyhow::Context;

use crate::cli::Cli;
use crate::migrate::plan::{human_duration, Plan};
use crate::migrate::rebalance::Rebalance;
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

/// A rebalance's plan: each node's load before and after, then the plan as a drain's
/// (with `--json`, one object whose `plan` is a drain's and whose `from`, `nodes`,
/// `balanced` and `note` say the rest).
pub(super) fn print_rebalance(cli: &Cli, r: &Rebalance) {
    if cli.json {
        println!("{}", serde_json::json!(r));
        return;
    }
    println!("rebalance: tolerance {}", r.tolerance);
    for n in &r.nodes {
        let nets: Vec<String> = n
            .sessions
            .iter()
            .map(|(k, (b, a))| format!("{k} {b} → {a}"))
            .collect();
        println!(
            "  {}: {} users → {}; sessions {}",
            n.node,
            n.users_before,
            n.users_after,
            nets.join(", ")
        );
    }
    print_plan(cli, &r.plan);
    for p in &r.plan.users {
        let batch = if p.batch == 0 {
            "canary".to_owned()
        } else {
            format!("batch {}", p.batch)
        };
        println!(
            "  move {} from {} to {} ({batch})",
            p.user_name,
            r.from.get(&p.user_id).map_or("?", String::as_str),
            p.to
        );
    }
    if !r.balanced && !r.plan.users.is_empty() {
        println!("  after these moves: {}", r.note);
    }
}

/// A downtime figure: `-` when no move recorded one (never a made-up 0 ms).
fn ms(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"))
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
            // An automatic rebalance says so, and which node started it.
            let by = serde_json::from_str::<migrate::Options>(&m.options)
                .ok()
                .and_then(|o| o.automatic)
                .map(|n| format!(", automatic by {n}"))
                .unwrap_or_default();
            println!(
                "migration {} ({} {} → {}{by}): {}{}",
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
                "  {} users: {} moved, {} failed, {} rolled back, {} pending; downtime p50 {}, p99 {}, max {}; elapsed {}",
                f.users, f.moved, f.failed, f.rolled_back, f.pending,
                ms(f.downtime_p50_ms), ms(f.downtime_p99_ms), ms(f.downtime_max_ms),
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
            .filter(|n| m.source_node.split(',').any(|s| s == n.id) || m.targets.contains(&n.id))
            .collect();
        let throttle = migrate::throttle_rejections(m, &involved, store.secret_key()).await;
        if !cli.json {
            for (net, nf) in &nets {
                println!(
                    "  network {net}: {} users: {} moved, {} failed, {} rolled back; downtime p50 {}, p99 {}",
                    nf.users,
                    nf.moved,
                    nf.failed,
                    nf.rolled_back,
                    ms(nf.downtime_p50_ms),
                    ms(nf.downtime_p99_ms)
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
