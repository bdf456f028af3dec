//! Benchmark 3: relay latency server → attached IRC client, with one user and under
//! fan-out, at a background load of simulated people ([`crate::loadgen::People`]).
//!
//! A prober on the ircd sends `bench <id> <sent_us>` to `#lat` at a steady rate. A
//! witness (a plain client on the same ircd, in `#lat`) records when the server emitted
//! each line; every attached client records when it arrived through the bouncer. The
//! bouncer's relay latency is client arrival − witness arrival (both read by this
//! process with the same clock); end-to-end (from the prober's send) is reported too.
//! The websocket path does not exist yet, so only IRC clients are measured.

use std::collections::HashMap;
use std::time::Duration;

use rand::SeedableRng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{attach_all, round2, Ctx, Section, Target};
use crate::bouncer::{wait_members, wait_members_below, Bouncer, Kind, Layout, ZncOpts};
use crate::client::{source_ip, Conn};
use crate::ircd::Ircd;
use crate::loadgen::{probe_text, spawn_reader, Mix, People, Recorder};
use crate::percentile;
use crate::words::Words;

const CHANNEL: &str = "#lat";
/// Probes per second.
const PROBE_RATE: f64 = 20.0;

struct Lat {
    relay: (f64, f64),
    json: Value,
}

async fn one(ctx: &Ctx, kind: Kind, ircd: &Ircd, n: usize, label: &str) -> anyhow::Result<Lat> {
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
    let readers = attach_all(&b, n, &rec, &cancel).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Measure the steady state, not the attach storm: live lines reach a client only
    // after its backlog replay, so once every client has this warm-up probe, replays
    // are over. Its samples are then discarded.
    let words = Words::new(20_000, 1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let warm = rec.probes.load(std::sync::atomic::Ordering::Relaxed) + n as u64;
    pw.send(format!("PRIVMSG {CHANNEL} :{}", probe_text(u64::MAX, &words, &mut rng)))
        .await?;
    let _ = crate::poll(Duration::from_secs(120), Duration::from_millis(50), || async {
        (rec.probes.load(std::sync::atomic::Ordering::Relaxed) >= warm).then_some(())
    })
    .await;
    rec.samples.lock().unwrap().clear();
    wrec.samples.lock().unwrap().clear();
    let probes0 = rec.probes.load(std::sync::atomic::Ordering::Relaxed);

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
    let want = probes0 + (samples * n) as u64;
    let _ = crate::poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { (rec.probes.load(std::sync::atomic::Ordering::Relaxed) >= want).then_some(()) },
    )
    .await;
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
    for (id, at) in rec.samples.lock().unwrap().iter() {
        if let Some(w) = wit.get(id) {
            relay.push(at.saturating_sub(*w) as f64 / 1000.0);
        }
        if let Some(s) = sent.get(id) {
            e2e.push(at.saturating_sub(*s) as f64 / 1000.0);
        }
    }
    relay.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    let r = (percentile(&relay, 50.0), percentile(&relay, 99.0));
    let e = (percentile(&e2e, 50.0), percentile(&e2e, 99.0));
    Ok(Lat {
        relay: r,
        json: json!({
            "system": kind.name(), "scenario": label, "users": n, "probes": samples,
            "samples": relay.len(), "expected_samples": want,
            "relay_p50_ms": round2(r.0), "relay_p99_ms": round2(r.1),
            "end_to_end_p50_ms": round2(e.0), "end_to_end_p99_ms": round2(e.1),
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
        "| system | scenario | users | samples | relay p50 (ms) | relay p99 (ms) | end-to-end p50 (ms) | end-to-end p99 (ms) |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut kinds = vec![Kind::Ferry];
    if ctx.sizes.znc("latency") {
        kinds.push(Kind::Znc);
    }
    let scenarios = [
        ("one user", 1usize, 1.0),
        ("fan-out", ctx.sizes.latency_fanout_users, 5.0),
    ];
    for (label, n, target_ms) in scenarios {
        let mut ferry_p99 = None;
        let mut znc_p99 = None;
        for &k in &kinds {
            eprintln!("latency: {label}, {n} users, {}", k.name());
            let l = one(ctx, k, &ircd, n, label).await?;
            let j = &l.json;
            md.push_str(&format!(
                "| {} | {label} | {n} | {} | {} | {} | {} | {} |\n",
                k.name(),
                j["samples"],
                j["relay_p50_ms"],
                j["relay_p99_ms"],
                j["end_to_end_p50_ms"],
                j["end_to_end_p99_ms"]
            ));
            if k == Kind::Ferry {
                ferry_p99 = Some(l.relay.1)
            } else {
                znc_p99 = Some(l.relay.1)
            }
            rows.push(l.json);
        }
        if let Some(p99) = ferry_p99 {
            targets.push(Target {
                name: format!("relay latency p99, {label} ({n} users)"),
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
