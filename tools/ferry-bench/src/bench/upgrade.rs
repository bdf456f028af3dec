//! Benchmark 12: in-place upgrade (issue 13). One `ferry serve` (SQLite) with N users,
//! one plaintext network each on one InspIRCd (groups of [`GROUP`] users share a
//! channel), and one raw IRC client attached per user. Once every user is in its
//! channel and every client attached, `ferry --json upgrade --binary W` runs, where
//! `W` is a shell script that sets `FERRY_VERSION_OVERRIDE` and execs the same
//! `ferry` (so the version visibly changes). The figures are the upgrade's own report
//! (`crate::upgrade::Report` in Ferry: sockets moved per kind, sessions reconnected
//! instead, the pause from the old process's barrier to the new one reading every
//! moved connection again, the accept pause, the total) and the new process's RSS.
//!
//! Checked, not assumed: every upstream and every client moved (none reconnected);
//! every attached client's socket stayed open and received a line a speaker said in
//! its channel after the upgrade; the speakers in the channels saw no QUIT or JOIN of
//! a Ferry user (the network noticed nothing).
//!
//! ZNC has no in-place upgrade: there is nothing to compare, and `--no-znc` changes
//! nothing here. The new `ferry serve` is the old one's child, not ours: it is stopped
//! by the PID its report names (SIGTERM, then SIGKILL), and only that PID.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::{futures_join_all, round2, settle, Ctx, Section, Target};
use crate::bouncer::{ferry_cli_timeout, wait_members, Bouncer, Layout};
use crate::client::{source_ip, Conn, Writer};
use crate::ircd::Ircd;

/// Users per channel.
const GROUP: usize = 10;
/// Channels per speaker on the ircd.
const CHANNELS_PER_SPEAKER: usize = 64;
/// Targets per `JOIN` line of a speaker.
const JOIN_CHUNK: usize = 20;

/// Signals one PID this bench caused to start (the new process of the upgrade) when
/// dropped: SIGTERM, then SIGKILL if it has not gone within a few seconds.
struct StopPid(u32);

impl StopPid {
    fn gone(&self) -> bool {
        // A zombie (exited, not yet reaped by its adoptive parent) counts as gone.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.0)) {
            Ok(s) => s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .is_some_and(|st| st == "Z" || st == "X"),
            Err(_) => true,
        }
    }

    async fn stop(&self, grace: Duration) {
        // SAFETY: kill(2) on the one PID the upgrade report named.
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while !self.gone() && t0.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for StopPid {
    fn drop(&mut self) {
        if !self.gone() {
            // SAFETY: as above.
            unsafe {
                libc::kill(self.0 as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// What an attached client saw: the marker line (after the upgrade), or its socket
/// closed / failed.
enum ClientEnd {
    Marker,
    Closed(String),
}

/// Reads an attached client until a PRIVMSG carrying `marker` arrives.
async fn client_reader(mut c: Conn, marker: String) -> ClientEnd {
    loop {
        match c.next().await {
            Ok(Some(l)) => {
                if l.command == "PRIVMSG" && l.last().contains(&marker) {
                    return ClientEnd::Marker;
                }
            }
            Ok(None) => return ClientEnd::Closed("end of file".into()),
            Err(e) => return ClientEnd::Closed(e.to_string()),
        }
    }
}

/// Reads a speaker until the `PONG` to `token`; counts QUITs and JOINs of Ferry users
/// (nicks `f…`) meanwhile.
async fn speaker_reader(
    mut c: Conn,
    token: String,
    quits: Arc<AtomicUsize>,
    joins: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    loop {
        let Some(l) = c.next().await? else {
            bail!("a speaker's connection closed");
        };
        match l.command.as_str() {
            "QUIT" | "PART" if l.nick.starts_with('f') => {
                quits.fetch_add(1, Ordering::Relaxed);
            }
            "JOIN" if l.nick.starts_with('f') => {
                joins.fetch_add(1, Ordering::Relaxed);
            }
            "PONG" if l.last() == token => return Ok(()),
            _ => {}
        }
    }
}

/// Where the pause goes, from the node's log (both processes write to it; its
/// timestamps are RFC 3339 with microseconds): milliseconds from the last line
/// containing `marks[0]` to the last line containing each later mark, `None` for a
/// mark not logged.
fn log_marks(log: &str, marks: &[&str]) -> Vec<Option<f64>> {
    let at = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok())
            .next_back()
    };
    let Some(t0) = marks.first().and_then(|m| at(m)) else {
        return vec![None; marks.len()];
    };
    marks
        .iter()
        .map(|m| {
            let t = at(m)?;
            Some(round2((t - t0).num_microseconds()? as f64 / 1000.0))
        })
        .collect()
}

/// The lines [`log_marks`] looks for: the check passed (the barrier follows at
/// once), every user parked and the writer flushed (then the handoff is sent), the
/// new process resumed the parked users, the new process confirmed.
const MARKS: [&str; 4] = [
    "upgrade: the new binary passed its check",
    "upgrade: users parked at the barrier",
    "upgrade: parked users resumed",
    "took the node over from the old process",
];

/// One size: its figures and the checks' outcome, as JSON.
async fn one(ctx: &Ctx, n: usize) -> anyhow::Result<serde_json::Value> {
    let ircd = Ircd::start("irc.bench").await?;
    let addr = ircd.addr();
    let layout = Layout {
        users: (0..n).map(|i| vec![format!("#up{}", i / GROUP)]).collect(),
    };
    let chans = layout.channels();
    eprintln!("upgrade: {n} users in {} channels", chans.len());
    let t = Instant::now();
    let mut b = Bouncer::ferry(&ctx.ferry_bin, &addr, &layout).await?;
    let old_pid = *b.pids().first().context("ferry runs")?;
    wait_members(
        &addr,
        &chans,
        n,
        Duration::from_secs(120) + Duration::from_millis(100 * n as u64),
    )
    .await?;
    let connect_secs = t.elapsed().as_secs_f64();

    // Every user gets one attached client, 25 at a time; each is read by a task
    // from now on (its replay, then the marker after the upgrade).
    let t = Instant::now();
    let marker = format!("after-upgrade-{}-{n}", std::process::id());
    let mut clients = Vec::with_capacity(n);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(25) {
        for c in futures_join_all(chunk.iter().map(|&i| b.attach(i))).await {
            clients.push(tokio::spawn(client_reader(c?, marker.clone())));
        }
    }
    let attach_secs = t.elapsed().as_secs_f64();
    let attached = b.ferry_metric("ferry_downstream_clients").await;

    // Speakers: one per CHANNELS_PER_SPEAKER channels, in them before the upgrade.
    let quits = Arc::new(AtomicUsize::new(0));
    let joins = Arc::new(AtomicUsize::new(0));
    let mut writers: Vec<(Writer, Vec<String>)> = Vec::new();
    let mut speakers = Vec::new();
    for (k, group) in chans.chunks(CHANNELS_PER_SPEAKER).enumerate() {
        let mut c = Conn::connect(&addr, Some(source_ip(40_000 + k))).await?;
        c.register(&format!("spk{k}"), None).await?;
        for j in group.chunks(JOIN_CHUNK) {
            c.send(format!("JOIN {}", j.join(","))).await?;
        }
        let last = group.last().cloned().unwrap_or_default();
        c.expect("366", Duration::from_secs(60), |l| {
            l.command == "366" && l.params.get(1).is_some_and(|p| p == &last)
        })
        .await?;
        writers.push((c.writer.clone(), group.to_vec()));
        speakers.push(tokio::spawn(speaker_reader(
            c,
            format!("done{k}"),
            quits.clone(),
            joins.clone(),
        )));
    }
    // Quiet before the barrier: every join and replay written.
    let settled = settle(&b, Duration::from_secs(120)).await;
    let old_rss = crate::procfs::rss_bytes(old_pid).unwrap_or(0);

    // The new binary: the same ferry, announcing another version.
    let scratch = tempfile::Builder::new()
        .prefix("ferry-bench-upgrade-")
        .tempdir()?;
    let wrapper = scratch.path().join("ferry-new");
    let exe = std::path::absolute(&ctx.ferry_bin)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nFERRY_VERSION_OVERRIDE={}-upgraded exec '{}' \"$@\"\n",
                ferry::upgrade::version(),
                exe.display()
            ),
        )?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    let args: Vec<String> = vec![
        "--data-dir".into(),
        b.data_dir().display().to_string(),
        "--json".into(),
        "upgrade".into(),
        "--binary".into(),
        wrapper.display().to_string(),
        "--timeout".into(),
        "120".into(),
    ];
    let t = Instant::now();
    let out = ferry_cli_timeout(&ctx.ferry_bin, &args, Duration::from_secs(600)).await;
    let cli_secs = t.elapsed().as_secs_f64();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let log = b.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "ferry upgrade failed: {e:#}\nlast lines of the node's log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    let report: ferry::upgrade::Report =
        serde_json::from_str(&out).with_context(|| format!("the upgrade report: {out}"))?;
    let new = StopPid(report.new.pid);
    let log = b.log();
    let marks = log_marks(&log, &MARKS);
    // Finer steps, when the binary logs them (`None` otherwise).
    let steps = log_marks(
        &log,
        &[
            MARKS[0],
            "upgrade: handoff sent",
            "upgrade: handoff received",
            "upgrade: the new process is up",
        ],
    );
    // The node's own account of the handoff (both processes), for where the pause goes.
    let handoff_log: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains(MARKS[0]))
        .take_while(|l| !l.contains(MARKS[3]))
        // Not the per-user lines (three per user parked, more per user resumed).
        .filter(|l| {
            !l.contains(" DEBUG ")
                && !l.contains(" TRACE ")
                && !l.contains(" user=")
                && !l.contains(" network=")
        })
        .take(60)
        .collect();
    eprintln!(
        "upgrade at {n} users, the node's log from the check to the confirmation:\n{}",
        handoff_log.join("\n")
    );
    let new_rss = crate::procfs::rss_bytes(report.new.pid).unwrap_or(0);

    // A line in every channel, said after the upgrade; every client must get it.
    let t = Instant::now();
    for (k, (w, group)) in writers.iter().enumerate() {
        for ch in group {
            w.send(format!("PRIVMSG {ch} :{marker}")).await?;
        }
        w.send(format!("PING :done{k}")).await?;
    }
    let wait = Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
    let ends = tokio::time::timeout(wait, futures_join_all(clients.into_iter()))
        .await
        .context("attached clients waiting for the line said after the upgrade")?;
    let mut got = 0;
    let mut closed = Vec::new();
    for e in ends {
        match e {
            Ok(ClientEnd::Marker) => got += 1,
            Ok(ClientEnd::Closed(why)) => closed.push(why),
            Err(e) => closed.push(e.to_string()),
        }
    }
    let delivered_secs = t.elapsed().as_secs_f64();
    for s in futures_join_all(speakers.into_iter()).await {
        s??;
    }
    let (quits, joins) = (quits.load(Ordering::Relaxed), joins.load(Ordering::Relaxed));
    let members = crate::ircd::stats(&addr, &chans)
        .await
        .map_or(0, |s| s.members);
    new.stop(Duration::from_secs(30)).await;
    b.stop(Duration::from_secs(5)).await;
    drop(new);

    let moved = |k: &str| report.moved.get(k).copied().unwrap_or(0);
    let r = report.reconnected;
    let ok = moved("upstream") == n as u64
        && moved("irc_client") == n as u64
        && r.upstream == 0
        && r.clients == 0
        && got == n
        && closed.is_empty()
        && quits == 0
        && joins == 0;
    if !ok {
        eprintln!(
            "upgrade at {n} users: moved {:?}, reconnected {r:?}, {got} of {n} clients got the line, {} closed ({:?}), QUIT/PART {quits}, JOIN {joins}",
            report.moved,
            closed.len(),
            closed.iter().take(3).collect::<Vec<_>>()
        );
    }
    Ok(json!({
        "users": n, "channels": chans.len(),
        "connect_secs": round2(connect_secs), "attach_secs": round2(attach_secs),
        "clients_attached_metric": attached,
        "settle_secs": settled.map(round2),
        "old": { "pid": report.old.pid, "version": report.old.version },
        "new": { "pid": report.new.pid, "version": report.new.version },
        "moved": report.moved,
        "moved_upstream": moved("upstream"), "moved_irc_client": moved("irc_client"),
        "reconnected": { "upstream": r.upstream, "clients": r.clients, "websocket": r.websocket },
        "pause_ms": round2(report.pause_ms),
        "accept_pause_ms": round2(report.accept_pause_ms),
        "total_ms": round2(report.total_ms),
        "cli_wall_secs": round2(cli_secs),
        // From the node's log, ms after "the new binary passed its check" (≈ the barrier).
        "log_parked_ms": marks[1], "log_resumed_ms": marks[2], "log_confirmed_ms": marks[3],
        "log_handoff_sent_ms": steps[1], "log_handoff_received_ms": steps[2],
        "log_new_up_ms": steps[3],
        // Each moved user's own pause (its park asked → its resume done), from the
        // report (binaries from state format 4 on).
        "user_pause_p50_ms": report.user_pause.map(|p| round2(p.p50_ms)),
        "user_pause_p99_ms": report.user_pause.map(|p| round2(p.p99_ms)),
        "user_pause_max_ms": report.user_pause.map(|p| round2(p.max_ms)),
        "old_rss_mib": round2(old_rss as f64 / 1048576.0),
        "new_rss_mib": round2(new_rss as f64 / 1048576.0),
        "clients_got_line_after": got, "clients_closed": closed.len(),
        "line_delivered_secs": round2(delivered_secs),
        "user_quits_or_parts_seen": quits, "user_joins_seen": joins,
        "channel_members_after": members,
        "all_moved_and_delivered": ok,
    }))
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let mut rows = Vec::new();
    for &n in &ctx.sizes.upgrade_users {
        rows.push(one(ctx, n).await?);
    }
    let mut md = String::from(
        "One node (SQLite), each user one plaintext network on InspIRCd and one attached \
         IRC client; `ferry --json upgrade` to the same binary with another \
         `FERRY_VERSION_OVERRIDE`. ZNC has no in-place upgrade: no ZNC row.\n\n\
         | users | moved: upstream / IRC clients | reconnected: upstream / clients | pause (ms) | each user's own pause p50 / p99 / max (ms) | accept pause (ms) | total (ms) | node's log, ms after the check: all parked + flushed / handoff sent / received / new process up / all resumed / confirmed | `ferry upgrade` wall (s) | RSS old → new (MiB) | clients open and got a line said after | user QUIT+PART / JOIN seen in the channels |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut targets = Vec::new();
    for r in &rows {
        let f = |k: &str| r[k].clone();
        md.push_str(&format!(
            "| {} | {} / {} | {} / {} | {} | {} / {} / {} | {} | {} | {} / {} / {} / {} / {} / {} | {} | {} → {} | {} of {} | {} / {} |\n",
            f("users"),
            f("moved_upstream"),
            f("moved_irc_client"),
            r["reconnected"]["upstream"],
            r["reconnected"]["clients"],
            f("pause_ms"),
            f("user_pause_p50_ms"),
            f("user_pause_p99_ms"),
            f("user_pause_max_ms"),
            f("accept_pause_ms"),
            f("total_ms"),
            f("log_parked_ms"),
            f("log_handoff_sent_ms"),
            f("log_handoff_received_ms"),
            f("log_new_up_ms"),
            f("log_resumed_ms"),
            f("log_confirmed_ms"),
            f("cli_wall_secs"),
            f("old_rss_mib"),
            f("new_rss_mib"),
            f("clients_got_line_after"),
            f("users"),
            f("user_quits_or_parts_seen"),
            f("user_joins_seen"),
        ));
        let n = r["users"].as_u64().unwrap_or(0);
        let pause = r["pause_ms"].as_f64().unwrap_or(f64::NAN);
        let ok = r["all_moved_and_delivered"].as_bool().unwrap_or(false);
        targets.push(Target {
            name: format!("in-place upgrade, {n} users: everything moved, nobody noticed"),
            target: "all moved, 0 reconnected, every client got the next line, no QUIT/JOIN".into(),
            measured: format!(
                "moved {} / {}, reconnected {} / {}, {} of {n} got the line",
                r["moved_upstream"],
                r["moved_irc_client"],
                r["reconnected"]["upstream"],
                r["reconnected"]["clients"],
                r["clients_got_line_after"]
            ),
            met: Some(ok),
        });
        if n >= 5_000 {
            targets.push(Target {
                name: format!("in-place upgrade, {n} users: pause"),
                target: "≤ 250 ms".into(),
                measured: format!("{pause} ms (total {} ms)", r["total_ms"]),
                met: Some(pause <= 250.0),
            });
            if let Some(max) = r["user_pause_max_ms"].as_f64() {
                targets.push(Target {
                    name: format!("in-place upgrade, {n} users: each user's own pause, max"),
                    target: "≤ 250 ms".into(),
                    measured: format!("{max} ms (p50 {} ms)", r["user_pause_p50_ms"]),
                    met: Some(max <= 250.0),
                });
            }
        }
    }
    Ok(Section {
        name: "upgrade",
        json: json!({ "runs": rows }),
        markdown: md,
        targets,
    })
}
