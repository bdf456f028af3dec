//! Benchmark 3: relay latency server → attached IRC client and → websocket client,
//! with one user and under fan-out, at a background load of simulated people
//! ([`crate::loadgen::People`]).
//!
//! A prober on the ircd sends `bench <id> <sent_us>` to `#lat` at a steady rate. A
//! witness (a plain client on the same ircd, in `#lat`) records when the server emitted
//! each line; every attached client records when it arrived through the bouncer. The
//! bouncer's relay latency is client arrival − witness arrival (both read by this
//! process with the same clock); end-to-end (from the prober's send) is reported too.
//! Probing starts once a warm-up probe has reached every client: a new IRC client is
//! first replayed a backlog (Ferry: 500 lines; ZNC: its buffer) and live lines wait
//! behind it, which is catch-up, not relay latency. Before the warm-up, Ferry catches
//! up (`bench::caught_up`: reading no more than background chat, its writer less than
//! a second behind), so the set-up's own work (the joins' rows, auto-away's
//! away-notify lines) is not in the window.
//!
//! Websocket clients (Ferry only) run as their own scenario, on a fresh node: each
//! user logs in (`POST /api/login`, from its own loopback address: logins are
//! rate-limited per address), opens `GET /ws` with `Authorization: Bearer`, resumes as
//! a new client and waits for `synced`; a probe's arrival is when its `message` event's
//! frame is read, on the same clock as the witness.

use std::collections::HashMap;
use std::time::Duration;

use rand::SeedableRng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{attach_all, caught_up, futures_join_all, round2, Ctx, Section, Target, WindowProfile};
use crate::bouncer::{wait_members, wait_members_below, Bouncer, Kind, Layout, ZncOpts, PASSWORD};
use crate::client::{source_ip, Conn};
use crate::ircd::Ircd;
use crate::loadgen::{probe_text, spawn_reader, Mix, People, Recorder};
use crate::percentile;
use crate::words::Words;

const CHANNEL: &str = "#lat";
/// Probes per second.
const PROBE_RATE: f64 = 20.0;
/// The id of the warm-up probe (not a sample).
const WARMUP: u64 = 999_999_999;
/// How long Ferry may take to catch up after its clients attached (see [`caught_up`]).
const SETTLE_LIMIT: Duration = Duration::from_secs(180);

struct Lat {
    relay: (f64, f64),
    json: Value,
}

/// What the measured clients are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    Irc,
    Websocket,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Irc => "irc",
            Client::Websocket => "websocket",
        }
    }
}

/// Logs users `0..n` in and opens a websocket for each (a few at a time), with a
/// reader each.
async fn attach_ws_all(
    b: &Bouncer,
    n: usize,
    rec: &std::sync::Arc<Recorder>,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let port = b.http_port;
    let mut handles = Vec::with_capacity(n);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(25) {
        let conns = futures_join_all(chunk.iter().map(|&i| async move {
            let token =
                crate::ws::login(port, &format!("u{i}"), PASSWORD, source_ip(20_000 + i)).await?;
            crate::ws::connect(port, &token).await
        }))
        .await;
        for c in conns {
            handles.push(crate::ws::spawn_reader(c?, rec.clone(), cancel.clone()));
        }
    }
    Ok(handles)
}

async fn one(
    ctx: &Ctx,
    kind: Kind,
    client: Client,
    ircd: &Ircd,
    n: usize,
    label: &str,
) -> anyhow::Result<Lat> {
    let addr = ircd.addr();
    // Users sit in #lat and in the two busiest background channels.
    let layout = Layout::all_in(n, &[CHANNEL, "#chat0", "#chat1"]);
    let chan = vec![CHANNEL.to_string()];
    let mut witness = Conn::connect(&addr, Some(source_ip(40_000))).await?;
    witness.register("witness", None).await?;
    witness.send(format!("JOIN {CHANNEL}")).await?;
    witness
        .expect("366", Duration::from_secs(10), |l| l.command == "366")
        .await?;
    let mut prober = Conn::connect(&addr, Some(source_ip(40_001))).await?;
    prober.register("prober", None).await?;
    prober.send(format!("JOIN {CHANNEL}")).await?;
    prober
        .expect("366", Duration::from_secs(10), |l| l.command == "366")
        .await?;
    let pw = prober.writer.clone();
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    l = prober.next_raw() => if !matches!(l, Ok(Some(_))) { break },
                }
            }
        }
    });
    let wrec = Recorder::new(true);
    let wreader = spawn_reader(witness, wrec.clone(), cancel.clone());

    let mut b = match kind {
        Kind::Ferry => Bouncer::ferry(&ctx.ferry_bin, &addr, &layout).await?,
        Kind::Znc => {
            Bouncer::znc(
                &addr,
                &layout,
                ZncOpts {
                    users_per_process: ctx.sizes.znc_users_per_process,
                },
            )
            .await?
        }
    };
    let per_proc = n.div_ceil(b.processes().max(1));
    wait_members(
        &addr,
        &chan,
        n + 2,
        Duration::from_secs(120 + 2 * per_proc as u64),
    )
    .await?;
    let rec = Recorder::new(true);
    let readers = match client {
        Client::Irc => attach_all(&b, n, &rec, &cancel).await?,
        Client::Websocket => attach_ws_all(&b, n, &rec, &cancel).await?,
    };
    // Ferry catches up before the probes. The set-up leaves it work that is not
    // relay: each user's copy of the N joins (N² rows: at 1,000 users the writer was
    // still 95 k rows behind when the window opened, in runs that did not wait), and
    // auto-away (users go away upstream ten seconds into a set-up that can take
    // longer, and come back as their clients attach: N² away-notify lines each way).
    // ZNC stores nothing and runs no auto-away here. The background chat goes on
    // meanwhile (about nine lines a second per user, in #chat0 and #chat1), so caught
    // up is reading at most 20 lines a second per user with the writer less than a
    // second behind.
    let settle_secs = match kind {
        Kind::Ferry => {
            let s = caught_up(&b, SETTLE_LIMIT, 20.0 * n as f64).await;
            if s.is_none() {
                eprintln!(
                    "latency: ferry did not catch up within {} s; measuring anyway",
                    SETTLE_LIMIT.as_secs()
                );
            }
            s
        }
        Kind::Znc => None,
    };
    let words = Words::new(20_000, 1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Barrier: a new IRC client first gets a backlog replay (Ferry: the last 500
    // lines; ZNC: its buffer), and live lines wait behind it. Probing starts once every
    // client has received a warm-up probe, so what is measured is the steady-state
    // relay, not the catch-up. (A new websocket client gets no replay.)
    pw.send(format!(
        "PRIVMSG {CHANNEL} :{}",
        probe_text(WARMUP, &words, &mut rng)
    ))
    .await?;
    let warm = crate::poll(
        Duration::from_secs(120),
        Duration::from_millis(50),
        || async {
            (rec.probes.load(std::sync::atomic::Ordering::Relaxed) >= n as u64).then_some(())
        },
    )
    .await;
    if warm.is_none() {
        anyhow::bail!("the warm-up probe did not reach all {n} clients in 120 s");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    rec.probes.store(0, std::sync::atomic::Ordering::Relaxed);
    rec.samples.lock().unwrap().clear();
    let lines0 = rec.lines.load(std::sync::atomic::Ordering::Relaxed);
    let profile = WindowProfile::start(&b, &format!("latency-{}-{n}", b.kind.name())).await;
    let cpu0 = b.cpu_seconds();
    let t0 = std::time::Instant::now();

    let mut sent: HashMap<u64, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / PROBE_RATE));
    let samples = ctx.sizes.latency_samples;
    for id in 0..samples as u64 {
        tick.tick().await;
        sent.insert(id, crate::now_us());
        pw.send(format!(
            "PRIVMSG {CHANNEL} :{}",
            probe_text(id, &words, &mut rng)
        ))
        .await?;
    }
    let want = (samples * n) as u64;
    let _ = crate::poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { (rec.probes.load(std::sync::atomic::Ordering::Relaxed) >= want).then_some(()) },
    )
    .await;
    let window = t0.elapsed().as_secs_f64();
    let cpu_pct = (b.cpu_seconds() - cpu0) / window * 100.0;
    if let Some(p) = profile {
        p.stop(&b).await;
    }
    let lines_per_sec =
        (rec.lines.load(std::sync::atomic::Ordering::Relaxed) - lines0) as f64 / window;
    cancel.cancel();
    for r in readers {
        let _ = r.await;
    }
    let _ = wreader.await;
    let _ = pw.send("QUIT").await;
    b.stop(Duration::from_secs(30)).await;
    drop(b);
    wait_members_below(&addr, &chan, 0, Duration::from_secs(30)).await;

    let wit: HashMap<u64, u64> = wrec.samples.lock().unwrap().iter().copied().collect();
    let mut relay = Vec::new();
    let mut e2e = Vec::new();
    // Relay p50 per tenth of the probes (by id): flat when the bouncer keeps up,
    // rising when it queues.
    let mut by_tenth: Vec<Vec<f64>> = vec![Vec::new(); 10];
    for (id, at) in rec
        .samples
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| *id != WARMUP)
    {
        if let Some(w) = wit.get(id) {
            let ms = at.saturating_sub(*w) as f64 / 1000.0;
            relay.push(ms);
            by_tenth[(*id as usize * 10 / samples.max(1)).min(9)].push(ms);
        }
        if let Some(s) = sent.get(id) {
            e2e.push(at.saturating_sub(*s) as f64 / 1000.0);
        }
    }
    relay.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    let r = (percentile(&relay, 50.0), percentile(&relay, 99.0));
    let e = (percentile(&e2e, 50.0), percentile(&e2e, 99.0));
    let tenths: Vec<f64> = by_tenth
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            round2(percentile(&v, 50.0))
        })
        .collect();
    Ok(Lat {
        relay: r,
        json: json!({
            "system": kind.name(), "client": client.name(), "scenario": label, "users": n, "probes": samples,
            "samples": relay.len(), "expected_samples": want,
            "clients_dropped": rec.closed.load(std::sync::atomic::Ordering::Relaxed),
            "relay_p50_ms": round2(r.0), "relay_p99_ms": round2(r.1),
            "end_to_end_p50_ms": round2(e.0), "end_to_end_p99_ms": round2(e.1),
            "relay_p50_ms_by_tenth": tenths,
            "bouncer_cpu_percent": round2(cpu_pct), "client_lines_per_sec": round2(lines_per_sec),
            "window_secs": round2(window),
            "settle_secs": settle_secs.map(round2),
        }),
    })
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let ircd = Ircd::start("irc.bench").await?;
    // Background: a modest crowd chatting in heavy-tailed channels (no netsplits: one
    // server here).
    let mix = Mix {
        people: if ctx.sizes.quick { 20 } else { 60 },
        events_per_second: if ctx.sizes.quick { 10.0 } else { 20.0 },
        netsplit_every_secs: 0.0,
        ..Mix::default()
    };
    let mut people = People::connect(&mix, &[ircd.addr()]).await?;
    let bg_cancel = CancellationToken::new();
    let bg = tokio::spawn({
        let c = bg_cancel.clone();
        async move {
            people.run(Duration::from_secs(3600), u64::MAX, &c).await;
            people.quit_all().await;
            people
        }
    });
    let mut md = String::from(
        "| system | client | scenario | users | samples/expected (clients dropped) | relay p50 (ms) | relay p99 (ms) | end-to-end p50 (ms) | end-to-end p99 (ms) | relay p50, first / last tenth of probes (ms) | bouncer CPU (% of a core) | lines/s to clients |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut kinds = vec![(Kind::Ferry, Client::Irc)];
    if ctx.sizes.latency_ws {
        kinds.push((Kind::Ferry, Client::Websocket));
    }
    if ctx.sizes.znc("latency") {
        kinds.push((Kind::Znc, Client::Irc));
    }
    let scenarios = [
        ("one user", 1usize, 1.0),
        ("fan-out", ctx.sizes.latency_fanout_users, 5.0),
    ];
    for (label, n, target_ms) in scenarios {
        let mut ferry_p99 = Vec::new();
        let mut znc_p99 = None;
        for &(k, c) in &kinds {
            eprintln!("latency: {label}, {n} users, {} {}", k.name(), c.name());
            let l = one(ctx, k, c, &ircd, n, label).await?;
            let j = &l.json;
            md.push_str(&format!(
                "| {} | {} | {label} | {n} | {}/{} ({} dropped) | {} | {} | {} | {} | {} / {} | {} | {} |\n",
                k.name(),
                c.name(),
                j["samples"],
                j["expected_samples"],
                j["clients_dropped"],
                j["relay_p50_ms"],
                j["relay_p99_ms"],
                j["end_to_end_p50_ms"],
                j["end_to_end_p99_ms"],
                j["relay_p50_ms_by_tenth"][0],
                j["relay_p50_ms_by_tenth"][9],
                j["bouncer_cpu_percent"],
                j["client_lines_per_sec"],
            ));
            if k == Kind::Ferry {
                ferry_p99.push((c, l.relay.1));
            } else {
                znc_p99 = Some(l.relay.1)
            }
            rows.push(l.json);
        }
        for (c, p99) in ferry_p99 {
            targets.push(Target {
                name: format!(
                    "relay latency p99 to {} clients, {label} ({n} users)",
                    if c == Client::Irc { "IRC" } else { "websocket" }
                ),
                target: format!("≤ {target_ms} ms"),
                measured: format!(
                    "{p99:.2} ms{}",
                    znc_p99.map_or(String::new(), |z| format!(" (ZNC {z:.2} ms)"))
                ),
                met: Some(p99 <= target_ms),
            });
        }
    }
    bg_cancel.cancel();
    let people = bg.await?;
    let _ = people;
    Ok(Section {
        name: "latency",
        json: json!({ "rows": rows, "background": { "people": mix.people, "events_per_second": mix.events_per_second } }),
        markdown: md,
        targets,
    })
}
