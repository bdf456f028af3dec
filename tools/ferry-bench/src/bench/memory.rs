//! Benchmarks 1 and idle CPU: resident memory per connected user, and idle CPU, for
//! Ferry and ZNC with the same layout on the same ircd, one after the other.
//!
//! Per user = (RSS with N users − processes × RSS with one user and no channel) / N, so
//! the fixed cost of a process is left out (ZNC may run as several processes, see
//! `bouncer`). Gross RSS / N is reported too.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{kib, round2, settle, settle_limit, Ctx, Section, Target};
use crate::bouncer::{wait_members, wait_members_below, Bouncer, Kind, Layout, ZncOpts};
use crate::ircd::Ircd;

struct Measured {
    rss: u64,
    procs: usize,
    connect_secs: f64,
    /// Ferry: seconds from "everyone joined" until the node had settled (see
    /// [`settle`]); `None` for ZNC, or when it did not settle in time.
    settle_secs: Option<f64>,
    idle_cpu_pct: f64,
}

async fn measure(
    ctx: &Ctx,
    kind: Kind,
    ircd: &Ircd,
    layout: &Layout,
    idle: Duration,
) -> anyhow::Result<Measured> {
    let addr = ircd.addr();
    let t0 = Instant::now();
    let mut b = match kind {
        Kind::Ferry => Bouncer::ferry(&ctx.ferry_bin, &addr, layout).await?,
        Kind::Znc => {
            Bouncer::znc(
                &addr,
                layout,
                ZncOpts {
                    users_per_process: ctx.sizes.znc_users_per_process,
                },
            )
            .await?
        }
    };
    // Ferry's sessions start as its process does (their auto-away clocks with them).
    let started = Instant::now();
    let channels = layout.channels();
    // ZNC connects one network per second per process.
    let per_proc = layout.len().div_ceil(b.processes().max(1));
    let timeout = Duration::from_secs(300 + per_proc as u64 * 3);
    wait_members(&addr, &channels, layout.memberships(), timeout).await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    // Let joins, NAMES and WHO-style bursts settle before reading memory: Ferry until
    // its writer is idle (its `/metrics` say so), ZNC (which stores nothing) a
    // fixed pause. Ferry first waits out its auto-away delay (its default; the
    // benchmark does not set it): users with no client go away upstream then, N²
    // away-notify lines in shared channels. Joins that ended sooner let the node look
    // settled before that burst and put it into the idle window (idle CPU read
    // 1.7–3.5% or 0.2–1.3% by how long the joins took); a hosted user without a
    // client is away, so the steady state is after it. Not in the quick smoke run,
    // nor for the per-process baseline (no channels, nobody to tell).
    let settle_secs = match kind {
        Kind::Ferry => {
            if !ctx.sizes.quick && layout.memberships() > 0 {
                let away = ferry::config::UserSettings::default().away_delay;
                let after_away = started + away + Duration::from_secs(2);
                tokio::time::sleep_until(after_away.into()).await;
            }
            let limit = settle_limit();
            let s = settle(&b, limit).await;
            if s.is_none() {
                eprintln!(
                    "memory: ferry did not settle within {} s; measuring anyway",
                    limit.as_secs()
                );
            }
            s
        }
        Kind::Znc => None,
    };
    tokio::time::sleep(Duration::from_secs(if ctx.sizes.quick { 1 } else { 3 })).await;
    let rss = b.rss_bytes();
    let c0 = b.cpu_seconds();
    // Marks the idle window in the log, so a profiler can be attached to just it.
    eprintln!("memory: {kind:?}, {} users: measuring", layout.users.len());
    let s0 = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_cpu_pct = (b.cpu_seconds() - c0) / s0.elapsed().as_secs_f64() * 100.0;
    eprintln!("memory: {kind:?}, {} users: measured", layout.users.len());
    let procs = b.processes();
    b.stop(Duration::from_secs(30)).await;
    drop(b);
    wait_members_below(&addr, &channels, 0, Duration::from_secs(30)).await;
    Ok(Measured {
        rss,
        procs,
        connect_secs,
        settle_secs,
        idle_cpu_pct,
    })
}

/// The layouts to run: `FERRY_BENCH_MEMORY_LAYOUTS` (comma-separated), default both.
fn layouts() -> Vec<&'static str> {
    let wanted = std::env::var("FERRY_BENCH_MEMORY_LAYOUTS").unwrap_or_default();
    ["small", "shared"]
        .into_iter()
        .filter(|l| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == *l))
        .collect()
}

/// A one-user, no-channel layout: the per-process baseline.
fn baseline() -> Layout {
    Layout {
        users: vec![vec![]],
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let ircd = Ircd::start("irc.bench").await?;
    let idle = Duration::from_secs(ctx.sizes.idle_secs);
    let mut kinds = vec![Kind::Ferry];
    if ctx.sizes.znc("memory") {
        kinds.push(Kind::Znc);
    }
    let mut base = std::collections::BTreeMap::new();
    for &k in &kinds {
        let m = measure(ctx, k, &ircd, &baseline(), Duration::from_millis(200)).await?;
        base.insert(k.name(), m.rss);
    }
    let mut rows: Vec<Value> = Vec::new();
    let mut md = String::from(
        "| layout | users | system | processes | RSS total (MiB) | gross KiB/user | net KiB/user | idle CPU (% of a core) | connect+join (s) | settled after (s) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut targets = Vec::new();
    for layout_name in layouts() {
        for &n in &ctx.sizes.memory_users {
            let layout = if layout_name == "small" {
                Layout::small(n)
            } else {
                Layout::shared(n)
            };
            let mut per_user = std::collections::BTreeMap::new();
            for &k in &kinds {
                eprintln!("memory: {layout_name} channels, {n} users, {}", k.name());
                let m = match measure(ctx, k, &ircd, &layout, idle).await {
                    Ok(m) => m,
                    Err(e) => {
                        // One failed measurement must not lose the others.
                        eprintln!("memory: {layout_name} {n} {}: {e:#}", k.name());
                        md.push_str(&format!(
                            "| {layout_name} | {n} | {} | failed: {e} | | | | | | |\n",
                            k.name()
                        ));
                        rows.push(json!({"layout": layout_name, "users": n, "system": k.name(), "error": format!("{e:#}")}));
                        continue;
                    }
                };
                let net =
                    (m.rss as f64 - m.procs as f64 * base[k.name()] as f64).max(0.0) / n as f64;
                let gross = m.rss as f64 / n as f64;
                per_user.insert(k.name(), (net, m.idle_cpu_pct));
                let settled = match (k, m.settle_secs) {
                    (Kind::Znc, _) => "–".to_string(),
                    (Kind::Ferry, Some(s)) => format!("{s:.1}"),
                    (Kind::Ferry, None) => format!("not in {} s", settle_limit().as_secs()),
                };
                md.push_str(&format!(
                    "| {layout_name} | {n} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {settled} |\n",
                    k.name(),
                    m.procs,
                    m.rss as f64 / 1048576.0,
                    gross / 1024.0,
                    net / 1024.0,
                    m.idle_cpu_pct,
                    m.connect_secs
                ));
                rows.push(json!({
                    "layout": layout_name, "users": n, "system": k.name(), "processes": m.procs,
                    "rss_bytes": m.rss, "gross_kib_per_user": kib(gross), "net_kib_per_user": kib(net),
                    "baseline_rss_bytes": base[k.name()], "idle_cpu_percent": round2(m.idle_cpu_pct),
                    "idle_secs": idle.as_secs(), "connect_secs": round2(m.connect_secs),
                    "settle_secs": m.settle_secs.map(round2),
                }));
            }
            if let (Some(f), Some(z)) = (per_user.get("ferry"), per_user.get("znc")) {
                let ratio = if z.0 > 0.0 { f.0 / z.0 } else { f64::NAN };
                let (want, label) = if layout_name == "small" {
                    (0.25, "1/4")
                } else {
                    (0.05, "1/20")
                };
                rows.push(
                    json!({"layout": layout_name, "users": n, "ferry_over_znc": round2(ratio)}),
                );
                md.push_str(&format!(
                    "| {layout_name} | {n} | **ratio ferry/znc** | | | | {ratio:.3} | | | |\n"
                ));
                targets.push(Target {
                    name: format!("memory per user, {layout_name} channels, {n} users"),
                    target: format!("≤ {label} of ZNC's"),
                    measured: format!(
                        "{:.1} KiB vs ZNC {:.1} KiB = {ratio:.3}",
                        f.0 / 1024.0,
                        z.0 / 1024.0
                    ),
                    met: Some(ratio <= want),
                });
            }
            if layout_name == "small" {
                if let Some(f) = per_user.get("ferry") {
                    let zs = per_user
                        .get("znc")
                        .map_or(String::new(), |z| format!(" (ZNC {:.2}%)", z.1));
                    targets.push(Target {
                        name: format!("idle CPU at {n} users (target is for 5,000)"),
                        target: "≤ 1% of a core".into(),
                        measured: format!("{:.2}%{zs} over {} s", f.1, idle.as_secs()),
                        met: Some(f.1 <= 1.0),
                    });
                }
            }
        }
    }
    Ok(Section {
        name: "memory",
        json: json!({"rows": rows, "baseline_rss_bytes": base}),
        markdown: md,
        targets,
    })
}
