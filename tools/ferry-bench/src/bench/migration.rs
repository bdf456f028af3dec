//! Benchmark 6: migration. Three `ferry serve` nodes on a scratch PostgreSQL database
//! (`--node-id n1/n2/n3`, upstreams bound to 127.0.0.2, .3 and .4, 6-second leases),
//! N users with one network each on one InspIRCd, all on n1; then
//! `ferry migrate drain n1 --yes --json` moves them to n2 and n3 through the targets'
//! limiters.
//!
//! Limits: the users first connect to n1 under loose limits (set-up, not measured);
//! then `ferry limits set 127.0.0.1 --connects-per-minute R --burst B` and the targets
//! start. The ircd enforces matching limits: `localmax` per address and a `connflood`
//! window that two addresses at R per minute keep under (n1's address is exempt from
//! `connflood`: it only connects during set-up).
//!
//! Figures: the drain's time (the migration's own start → finish, and the CLI's wall
//! time) against the bound the tool computes (`migrate::plan::bound`, the plan's ETA),
//! users per minute, per-user downtime p50/p99/max (`migrate::figures`: the
//! source's QUIT → the target's rejoin), and rejections: each node's
//! `ferry_upstream_throttled_total` + `ferry_upstream_no_slot_total` (as `ferry migrate
//! status` reports them) and the ircd's log. After the drain the ircd's channel must
//! hold exactly N members (nobody lost, nobody doubled).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry::store::{node_state, Store};
use serde_json::{json, Value};

use super::scratch::Scratch;
use super::{round2, Ctx, Section, Target};
use crate::bouncer::{
    ferry_cli, ferry_cli_timeout, ferry_rejections, provision_ferry, wait_members, Layout, Limits,
    Node,
};
use crate::ircd::{self, Ircd, IrcdOpts};

const CHANNEL: &str = "#mig";
const KEY: &str = "127.0.0.1";
const LEASE_SECS: u64 = 6;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let s = &ctx.sizes;
    let n = s.migration_users;
    if !s.postgres {
        return Ok(Section {
            name: "migration",
            json: json!({ "status": "not run: needs PostgreSQL (--no-postgres)" }),
            markdown: "Not run: the cluster needs PostgreSQL (`--no-postgres` was given).\n".into(),
            targets: Vec::new(),
        });
    }
    let limits = Limits {
        sessions_per_ip: (n + 10) as u32,
        connects_per_minute: s.migration_connects_per_minute,
        burst: s.migration_burst,
    };
    let flood = limits.connflood(2);
    let ircd = Ircd::start_opts(
        "irc.bench",
        IrcdOpts {
            localmax: Some(limits.sessions_per_ip),
            connflood: Some(flood),
            exempt: vec![ip(2)],
        },
    )
    .await?;
    let db = Scratch::new("postgres", &ctx.postgres_admin_url)
        .await
        .context("a scratch PostgreSQL database (FERRY_BENCH_POSTGRES)")?;
    let r = drain(ctx, &ircd, &db.url, n, limits, flood).await;
    db.drop_db().await;
    r
}

async fn drain(
    ctx: &Ctx,
    ircd: &Ircd,
    url: &str,
    n: usize,
    limits: Limits,
    flood: (u32, u32),
) -> anyhow::Result<Section> {
    let bin = &ctx.ferry_bin;
    let addr = ircd.addr();
    let chans = vec![CHANNEL.to_string()];
    let db = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["--database".to_string(), url.to_string()];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    };
    eprintln!("migration: {n} users on n1");
    provision_ferry(url, &addr, &Layout::all_in(n, &[CHANNEL])).await?;
    // Set-up: everyone connects to n1 quickly.
    let loose = Limits {
        connects_per_minute: 60_000.0,
        burst: 1_000,
        ..limits
    };
    let mut args = db(&[]);
    args.extend(loose.cli_args(KEY));
    ferry_cli(bin, &args).await?;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-cluster-")
        .tempdir()?;
    let n1 = Node::start(bin, url, dir.path(), "n1", ip(2), LEASE_SECS).await?;
    wait_members(&addr, &chans, n, Duration::from_secs(120 + n as u64 / 5))
        .await
        .with_context(|| format!("users on n1:\n{}", tail(&n1.log())))?;

    // The migration's limits; the targets start with them.
    let mut args = db(&[]);
    args.extend(limits.cli_args(KEY));
    ferry_cli(bin, &args).await?;
    let n2 = Node::start(bin, url, dir.path(), "n2", ip(3), LEASE_SECS).await?;
    let n3 = Node::start(bin, url, dir.path(), "n3", ip(4), LEASE_SECS).await?;
    let store = Store::open(url).await?;
    let up = crate::poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let nodes = store.nodes().await.ok()?;
            ["n1", "n2", "n3"]
                .iter()
                .all(|id| {
                    nodes
                        .iter()
                        .any(|x| x.id == *id && x.state == node_state::ACTIVE)
                })
                .then_some(())
        },
    )
    .await;
    store.close().await;
    if up.is_none() {
        bail!("the three nodes did not all register as active");
    }

    eprintln!(
        "migration: draining n1 → n2, n3 ({} connects/min per IP, burst {})",
        limits.connects_per_minute, limits.burst
    );
    let t = Instant::now();
    let bound_guess = limits.bound_secs(KEY, n, 2);
    let mut drain_args = db(&["--json", "migrate", "drain", "n1", "--yes"]);
    if let Some(p) = ctx.sizes.migration_parallel {
        drain_args.extend(["--parallel".to_string(), p.to_string()]);
    }
    let out = ferry_cli_timeout(
        bin,
        &drain_args,
        Duration::from_secs(300) + Duration::from_secs_f64(bound_guess * 3.0),
    )
    .await;
    let cli_secs = t.elapsed().as_secs_f64();
    let out = out.with_context(|| {
        format!(
            "n1:\n{}\nn2:\n{}\nn3:\n{}",
            tail(&n1.log()),
            tail(&n2.log()),
            tail(&n3.log())
        )
    })?;
    let lines: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let plan = lines
        .iter()
        .find_map(|v| v.get("plan"))
        .context("no plan in the drain's output")?
        .clone();
    let done = lines
        .iter()
        .rev()
        .find(|v| v.get("figures").is_some())
        .context("no figures in the drain's output")?
        .clone();
    let id = done["id"].as_i64().context("migration id")?;
    let f = &done["figures"];
    let bound = plan["eta_seconds"].as_f64().unwrap_or(f64::NAN);
    let elapsed = f["elapsed_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let moved = f["moved"].as_u64().unwrap_or(0) as usize;
    let failed = f["failed"].as_u64().unwrap_or(0) as usize;
    let status_out = ferry_cli(bin, &db(&["--json", "migrate", "status", &id.to_string()])).await?;
    let status: Value = serde_json::from_str(status_out.trim()).context("status JSON")?;
    let status = &status[0];
    let throttle = &status["throttle_rejections"];
    let status_rejections = numbers(throttle).iter().sum::<f64>();

    // Everyone is back in the channel, once.
    let _ = wait_members(&addr, &chans, n, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let members = ircd::stats(&addr, &chans).await?.members;
    let mut node_rejections = serde_json::Map::new();
    let mut metric_rejections = 0.0;
    for node in [&n1, &n2, &n3] {
        let r = ferry_rejections(node.http_port).await.unwrap_or(f64::NAN);
        metric_rejections += r;
        node_rejections.insert(node.id.clone(), json!(r));
    }
    let ircd_rejections = ircd.rejections();
    if !ircd_rejections.is_empty() {
        eprintln!(
            "migration: the ircd refused connections:\n{}",
            ircd_rejections.join("\n")
        );
    }
    drop((n1, n2, n3));

    let rejections = metric_rejections + ircd_rejections.len() as f64;
    let ratio = elapsed / bound;
    let per_min = moved as f64 / elapsed * 60.0;
    let bound_per_min = n as f64 / bound * 60.0;
    let ms = |k: &str| f[k].as_i64().map_or("–".to_string(), |v| v.to_string());
    let md = format!(
        "Limits: {R} connects/min per source IP, burst {B}, 2 target IPs (127.0.0.3, .4); the ircd: \
         `localmax` {S}, `connflood` {mc} registrations per {p} s window. `ferry migrate drain n1 --yes` \
         (canary 5, batches of 50, {par} at once).\n\n\
         | users | moved / failed | drain (s) | CLI wall (s) | bound (s) | ratio | users/min (bound) | downtime p50 / p99 / max (ms) | rejections: Ferry metrics / ircd log | channel members after |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | {n} | {moved} / {failed} | {elapsed:.2} | {cli_secs:.2} | {bound:.2} | {ratio:.2} | {per_min:.0} ({bound_per_min:.0}) | {} / {} / {} | {metric_rejections} / {} | {members} |\n",
        ms("downtime_p50_ms"),
        ms("downtime_p99_ms"),
        ms("downtime_max_ms"),
        ircd_rejections.len(),
        R = limits.connects_per_minute,
        B = limits.burst,
        S = limits.sessions_per_ip,
        p = flood.0,
        mc = flood.1,
        par = ctx.sizes.migration_parallel.unwrap_or(8),
    );
    let targets = vec![
        Target {
            name: format!("migration drain, {n} users: time vs limit-imposed bound"),
            target: "≤ 1.1 × bound".into(),
            measured: format!("{elapsed:.2} s vs {bound:.2} s (ratio {ratio:.2})"),
            met: (bound > 0.0).then_some(ratio <= 1.1),
        },
        Target {
            name: format!("migration drain, {n} users: rejections"),
            target: "0".into(),
            measured: format!("{rejections}"),
            met: Some(rejections == 0.0),
        },
    ];
    Ok(Section {
        name: "migration",
        json: json!({
            "users": n, "limits": limits, "target_ips": 2,
            "parallel": ctx.sizes.migration_parallel,
            "ircd_connflood": { "period_secs": flood.0, "maxconns": flood.1 },
            "ircd_localmax": limits.sessions_per_ip,
            "migration_id": id, "state": done["state"], "moved": moved, "failed": failed,
            "drain_secs": round2(elapsed), "cli_wall_secs": round2(cli_secs),
            "bound_secs": round2(bound), "ratio_to_bound": round2(ratio),
            "users_per_min": round2(per_min), "bound_users_per_min": round2(bound_per_min),
            "downtime_p50_ms": f["downtime_p50_ms"], "downtime_p99_ms": f["downtime_p99_ms"],
            "downtime_max_ms": f["downtime_max_ms"],
            "rejections": rejections, "node_rejections": node_rejections,
            "status_throttle_rejections": status_rejections,
            "ircd_rejections": ircd_rejections.len(), "channel_members_after": members,
            "plan_bounds": plan["bounds"], "networks": status["networks"],
        }),
        markdown: md,
        targets,
    })
}

/// Every number inside a JSON value.
fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Number(x) => x.as_f64().into_iter().collect(),
        Value::Array(a) => a.iter().flat_map(numbers).collect(),
        Value::Object(o) => o.values().flat_map(numbers).collect(),
        _ => Vec::new(),
    }
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
