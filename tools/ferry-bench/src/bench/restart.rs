//! Benchmark 5: restart storm. N Ferry users, one network each on one InspIRCd, with
//! real per-network limits (`ferry limits set 127.0.0.1 --sessions-per-ip S
//! --connects-per-minute R --burst B`) and two source IPs; the ircd enforces matching
//! limits (`localmax` = S per address, a `connflood` window the limits keep under), so
//! a node that reconnects too fast is refused. The node is stopped (SIGTERM: QUIT
//! upstream, flush) and started again; we time from the new process's start until the
//! ircd sees every user back in its channel, against the bound the limits impose,
//! `max(0, N − B × IPs) × 60 / (R × IPs)` (the formula `ferry migrate` plans with),
//! and count rejections three ways: Ferry's `ferry_upstream_throttled_total` +
//! `ferry_upstream_no_slot_total`, the ircd's log (throttle activations and `localmax`
//! warnings, [`crate::ircd::REJECTION_TEXTS`]) and `disconnected` lines in Ferry's log.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{round2, Ctx, Section, Target};
use crate::bouncer::{ferry_rejections, wait_members, Bouncer, FerryOpts, Layout, Limits};
use crate::client::Conn;
use crate::ircd::{Ircd, IrcdOpts};

const CHANNEL: &str = "#storm";
/// The limits key of the bench ircd's networks (the host of its address).
const KEY: &str = "127.0.0.1";

/// Seconds from `start` to the first and to the last line of a Ferry log containing
/// `what`: the node's own view of the reconnect (its log timestamps are RFC 3339).
fn log_times(log: &str, what: &str, start: chrono::DateTime<chrono::Utc>) -> Option<(f64, f64)> {
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = log
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let t = l.split_whitespace().next()?;
            chrono::DateTime::parse_from_rfc3339(t).ok()
        })
        .collect();
    let secs = |t: &chrono::DateTime<chrono::FixedOffset>| {
        (t.with_timezone(&chrono::Utc) - start)
            .num_microseconds()
            .map(|us| us as f64 / 1e6)
    };
    Some((secs(times.iter().min()?)?, secs(times.iter().max()?)?))
}

/// Reads the watcher until `want` distinct nicks did `command` (`JOIN` or `QUIT`);
/// returns when the last one arrived ([`crate::now_us`]).
async fn watch(w: &mut Conn, command: &str, want: usize, timeout: Duration) -> anyhow::Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut last = crate::now_us();
    let fut = async {
        while seen.len() < want {
            let Some(l) = w.next().await? else {
                anyhow::bail!("the watcher's connection closed");
            };
            if l.command == command && l.nick != "watcher" && seen.insert(l.nick.clone()) {
                last = crate::now_us();
            }
        }
        anyhow::Ok(last)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "after {timeout:?} the watcher saw {} of {want} {command}s",
            seen.len()
        ),
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let s = &ctx.sizes;
    let n = s.restart_users;
    let ips: Vec<IpAddr> = (0..s.restart_source_ips.clamp(1, 8))
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k as u8)))
        .collect();
    // Room for everyone on each address with a few to spare; the ircd allows exactly
    // as many per address.
    let limits = Limits {
        sessions_per_ip: (n.div_ceil(ips.len()) + 5) as u32,
        connects_per_minute: s.restart_connects_per_minute,
        burst: s.restart_burst,
    };
    let flood = limits.connflood(ips.len());
    let ircd = Ircd::start_opts(
        "irc.bench",
        IrcdOpts {
            localmax: Some(limits.sessions_per_ip),
            connflood: Some(flood),
            exempt: Vec::new(),
        },
    )
    .await?;
    let addr = ircd.addr();
    let bound = limits.bound_secs(KEY, n, ips.len());
    let layout = Layout::all_in(n, &[CHANNEL]);
    let chans = vec![CHANNEL.to_string()];
    eprintln!(
        "restart: {n} users, {} source IPs, {} connects/min per IP, burst {}: bound {bound:.1} s",
        ips.len(),
        limits.connects_per_minute,
        limits.burst
    );
    let mut b = Bouncer::ferry_opts(
        &ctx.ferry_bin,
        &addr,
        &layout,
        &FerryOpts {
            source_ips: ips.clone(),
            limits: Some(limits),
            ..FerryOpts::default()
        },
    )
    .await?;
    let wait = Duration::from_secs(120) + Duration::from_secs_f64(bound * 3.0);
    let t = Instant::now();
    wait_members(&addr, &chans, n, wait).await?;
    let first_connect = t.elapsed().as_secs_f64();
    let first_ferry_rejections = ferry_rejections(b.http_port).await?;
    let ircd_before = ircd.rejections().len();
    let log_before = b.log().len();
    // A watcher in the channel (from the probe address, exempt from connflood) sees
    // each user leave and come back, timed on this process's clock.
    let mut w = Conn::connect(&addr, Some(crate::ircd::PROBE_IP)).await?;
    w.register("watcher", None).await?;
    w.send(format!("JOIN {CHANNEL}")).await?;
    w.expect("366", Duration::from_secs(30), |l| l.command == "366")
        .await?;

    let t0 = Instant::now();
    let stop_secs = b.stop(Duration::from_secs(60)).await.as_secs_f64();
    if !s.restart_ferry_limits {
        // Control: the node restarts without limits (the ircd keeps its own).
        let mut args = vec!["--data-dir".to_string(), b.data_dir().display().to_string()];
        args.extend(["limits", "remove", KEY].map(String::from));
        crate::bouncer::ferry_cli(&ctx.ferry_bin, &args).await?;
    }
    watch(&mut w, "QUIT", n, Duration::from_secs(60)).await?;
    let t1 = crate::now_us();
    let started_at = chrono::Utc::now();
    b.restart(Duration::from_secs(1)).await?;
    let listening_secs = (crate::now_us() - t1) as f64 / 1e6;
    let all = watch(&mut w, "JOIN", n, wait).await;
    let all_secs = all
        .as_ref()
        .map_or(f64::NAN, |at| at.saturating_sub(t1) as f64 / 1e6);
    let total_secs = t0.elapsed().as_secs_f64();
    // Everyone once: the channel holds the users and the watcher.
    let members = crate::ircd::stats(&addr, &chans)
        .await
        .map_or(0, |s| s.members);
    let restart_ferry_rejections = ferry_rejections(b.http_port).await.unwrap_or(f64::NAN);
    let log = b.log();
    let new_log = &log[log_before.min(log.len())..];
    let errors = new_log
        .lines()
        .filter(|l| l.contains("disconnected"))
        .count();
    let registered = new_log
        .lines()
        .filter(|l| l.contains(": registered"))
        .count();
    let reg = log_times(new_log, ": registered", started_at);
    let dials = log_times(new_log, "upstream connecting", started_at);
    let span = reg.map(|(first, last)| last - first);
    let ircd_rejections = ircd.rejections();
    let ircd_restart = ircd_rejections.len() - ircd_before;
    b.stop(Duration::from_secs(60)).await;
    if s.restart_ferry_limits {
        all?;
    }
    if !ircd_rejections.is_empty() {
        eprintln!(
            "restart: the ircd refused connections:\n{}",
            ircd_rejections.join("\n")
        );
    }

    let rejections = restart_ferry_rejections as usize + ircd_restart + errors;
    // Judged: start → the last user registered (its 001, in Ferry's log); the
    // watcher's last JOIN (registration + JOIN + relay to the watcher) is shown next to it.
    let all_registered = reg.map(|r| r.1);
    let ratio = all_registered.filter(|_| bound > 0.0).map(|r| r / bound);
    let ratio_joined = (bound > 0.0).then(|| all_secs / bound);
    let fmt_ratio = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.2}"));
    let md = format!(
        "{control}Limits: {R} connects/min per source IP, burst {B}, {S} sessions per IP, {ips} source IPs; \
         the ircd: `localmax` {S}, `connflood` {mc} registrations per {p} s window.\n\n\
         | users | first connect (s) | stop: QUIT + flush (s) | start → listening (s) | start → first / last dial, Ferry's log (s) | start → first / last registered, Ferry's log (s) | start → last JOIN, seen by a watcher (s) | bound (s) | ratio: registered / joined | rejections: Ferry metrics / ircd log / `disconnected` | channel members after (incl. watcher) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n\
         | {n} | {first_connect:.2} | {stop_secs:.2} | {listening_secs:.2} | {} | {} | {all_secs:.2} | {bound:.2} | {} / {} | {restart_ferry_rejections} / {ircd_restart} / {errors} | {members} |\n",
        dials.map_or("–".to_string(), |(a, z)| format!("{a:.2} / {z:.2}")),
        reg.map_or("–".to_string(), |(a, z)| format!("{a:.2} / {z:.2}")),
        fmt_ratio(ratio),
        fmt_ratio(ratio_joined),
        R = limits.connects_per_minute,
        B = limits.burst,
        S = limits.sessions_per_ip,
        ips = ips.len(),
        p = flood.0,
        mc = flood.1,
        control = if s.restart_ferry_limits {
            ""
        } else {
            "**Control run: Ferry's limits removed before the restart** (the ircd keeps its own). "
        },
    );
    let targets = vec![
        Target {
            name: format!("restart storm, {n} users: rejections"),
            target: "0".into(),
            measured: format!(
                "{rejections} (first connect: {first_ferry_rejections} Ferry, {ircd_before} ircd)"
            ),
            met: Some(rejections == 0),
        },
        Target {
            name: format!(
                "restart storm, {n} users: start → all registered vs limit-imposed bound"
            ),
            target: "≤ 1.1 × bound".into(),
            measured: format!(
                "{} s vs {bound:.2} s (ratio {}; last JOIN {all_secs:.2} s, ratio {})",
                all_registered.map_or("–".to_string(), |r| format!("{r:.2}")),
                fmt_ratio(ratio),
                fmt_ratio(ratio_joined)
            ),
            met: ratio.map(|r| r <= 1.1),
        },
    ];
    Ok(Section {
        name: "restart",
        json: json!({
            "users": n, "source_ips": ips.len(), "limits": limits,
            "ferry_limits_configured": s.restart_ferry_limits,
            "ircd_connflood": { "period_secs": flood.0, "maxconns": flood.1 },
            "ircd_localmax": limits.sessions_per_ip,
            "first_connect_secs": round2(first_connect), "stop_secs": round2(stop_secs),
            "listening_secs": round2(listening_secs),
            "all_registered_secs": all_registered.map(round2), "all_joined_secs": round2(all_secs),
            "total_secs": round2(total_secs), "channel_members_after": members, "registered_log_lines": registered,
            "registration_span_secs": span.map(round2),
            "first_dial_secs": dials.map(|r| round2(r.0)),
            "last_dial_secs": dials.map(|r| round2(r.1)),
            "first_registered_secs": reg.map(|r| round2(r.0)),
            "last_registered_secs": reg.map(|r| round2(r.1)),
            "limit_bound_secs": round2(bound), "ratio_to_bound": ratio.map(round2),
            "joined_ratio_to_bound": ratio_joined.map(round2),
            "rejections": rejections,
            "ferry_rejections_metric": restart_ferry_rejections,
            "ircd_rejections": ircd_restart, "upstream_errors_log": errors,
            "first_connect_ferry_rejections": first_ferry_rejections,
            "first_connect_ircd_rejections": ircd_before,
        }),
        markdown: md,
        targets,
    })
}
