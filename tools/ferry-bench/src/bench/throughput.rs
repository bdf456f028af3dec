//! Benchmark 2: one busy channel joined by all N users, each with an attached client.
//! Speakers (plain clients on the ircd, several because InspIRCd paces one client's
//! input) send M probe lines at an offered rate; each line reaches N upstream
//! connections, is stored (Ferry: durably, with the search index) and relayed to N
//! attached clients. Reports deliveries per second and CPU seconds per 1,000
//! deliveries of the bouncer process(es), Ferry next to ZNC on the same traffic.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{attach_all, round2, Ctx, Section, Target, WindowProfile};
use crate::bouncer::{wait_members, wait_members_below, Bouncer, Kind, Layout, ZncOpts};
use crate::client::{source_ip, Conn, Writer};
use crate::ircd::Ircd;
use crate::loadgen::{probe_text, Recorder};
use crate::words::Words;

const CHANNEL: &str = "#busy";

pub struct Run {
    pub json: Value,
    pub cpu_ms_per_1000: f64,
    pub row: String,
}

async fn one(ctx: &Ctx, kind: Kind, ircd: &Ircd) -> anyhow::Result<Run> {
    let n = ctx.sizes.throughput_users;
    let m = ctx.sizes.throughput_messages;
    let addr = ircd.addr();
    let layout = Layout::all_in(n, &[CHANNEL]);
    let channels = vec![CHANNEL.to_string()];
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
        &channels,
        n,
        Duration::from_secs(120 + 2 * per_proc as u64),
    )
    .await?;
    let rec = Recorder::new(false);
    let cancel = CancellationToken::new();
    let readers = attach_all(&b, n, &rec, &cancel).await?;
    let speakers = join_speakers(ctx, &addr, CHANNEL).await?;
    // Let attach bursts and playback finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes0 = rec.probes.load(Ordering::Relaxed);
    let stored0 = b
        .ferry_metric("ferry_store_write_messages_total")
        .await
        .unwrap_or(0.0);
    let widened0 = b.ferry_metric("ferry_store_events_widened_total").await;
    let profile = WindowProfile::start(&b, &format!("throughput-{}-{n}", kind.name())).await;
    let cpu0 = b.cpu_seconds();
    let sys0 = b.system_cpu_seconds();
    // Marks the measured window in the log, so a profiler can be attached to just it.
    eprintln!("throughput: {kind:?}: measuring");
    let t0 = Instant::now();
    send_lines(ctx, &speakers, CHANNEL, m).await?;
    let send_secs = t0.elapsed().as_secs_f64();
    let expected = (n * m) as u64;
    let deadline = Duration::from_secs(60 + (m as f64 / ctx.sizes.throughput_rate) as u64);
    let delivered_at = crate::poll(deadline, Duration::from_millis(20), || async {
        (rec.probes.load(Ordering::Relaxed) - probes0 >= expected).then(Instant::now)
    })
    .await;
    let delivered = rec.probes.load(Ordering::Relaxed) - probes0;
    let deliver_secs = delivered_at
        .unwrap_or_else(Instant::now)
        .duration_since(t0)
        .as_secs_f64();
    let cpu = b.cpu_seconds() - cpu0;
    let mut stored = None;
    let mut stored_secs = None;
    if kind == Kind::Ferry {
        let s = crate::poll(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async {
                let v = b.ferry_metric("ferry_store_write_messages_total").await? - stored0;
                (v >= expected as f64).then_some(v)
            },
        )
        .await;
        stored_secs = Some(t0.elapsed().as_secs_f64());
        stored = Some(
            s.unwrap_or(
                b.ferry_metric("ferry_store_write_messages_total")
                    .await
                    .unwrap_or(0.0)
                    - stored0,
            ),
        );
    }
    let cpu_total = b.cpu_seconds() - cpu0;
    let sys_total = b.system_cpu_seconds() - sys0;
    // Shared lines committed before all their rows came (each written twice), in
    // the measured window.
    let widened = match kind {
        Kind::Ferry => b
            .ferry_metric("ferry_store_events_widened_total")
            .await
            .map(|w| w - widened0.unwrap_or(0.0)),
        _ => None,
    };
    if let Some(p) = profile {
        p.stop(&b).await;
    }
    eprintln!("throughput: {kind:?}: measured");
    if let Some(w) = widened {
        eprintln!("throughput: {kind:?}: {w:.0} shared lines widened in the window");
    }
    let dropped = rec.closed.load(Ordering::Relaxed);
    cancel.cancel();
    for r in readers {
        let _ = r.await;
    }
    for w in &speakers {
        let _ = w.send("QUIT").await;
    }
    b.stop(Duration::from_secs(30)).await;
    drop(b);
    wait_members_below(&addr, &channels, 0, Duration::from_secs(30)).await;

    let per_sec = delivered as f64 / deliver_secs.max(1e-9);
    // CPU including the tail of durable storing (Ferry); per delivery to a client.
    let per_1000 = |secs: f64| secs * 1000.0 / (delivered.max(1) as f64 / 1000.0);
    let cpu_ms_per_1000 = per_1000(cpu_total);
    // The kernel's share: socket reads and writes (on loopback, also the receiving
    // side's TCP processing), the same work for any bouncer on the same traffic.
    let sys_ms_per_1000 = per_1000(sys_total);
    let row = format!(
        "| {} | {n} | {m} | {:.0} | {delivered}/{expected} | {:.1} | {:.0} | {} | {:.2} | {:.2} | {:.2} / {:.2} | {dropped} |\n",
        kind.name(),
        m as f64 / send_secs,
        deliver_secs,
        per_sec,
        stored.map_or("–".to_string(), |s| format!("{s:.0} in {:.1} s", stored_secs.unwrap_or(0.0))),
        cpu,
        cpu_ms_per_1000,
        cpu_ms_per_1000 - sys_ms_per_1000,
        sys_ms_per_1000,
    );
    Ok(Run {
        json: json!({
            "system": kind.name(), "users": n, "messages": m, "offered_rate": round2(m as f64 / send_secs),
            "expected_deliveries": expected, "delivered": delivered, "deliver_secs": round2(deliver_secs),
            "deliveries_per_sec": round2(per_sec), "stored": stored, "stored_secs": stored_secs.map(round2),
            "cpu_secs_during_delivery": round2(cpu), "cpu_secs_total": round2(cpu_total),
            "cpu_ms_per_1000_deliveries": round2(cpu_ms_per_1000),
            "system_cpu_ms_per_1000_deliveries": round2(sys_ms_per_1000), "clients_dropped": dropped,
            "shared_lines_widened": widened,
        }),
        cpu_ms_per_1000,
        row,
    })
}

/// Plain clients on the ircd, joined to `channel`, that send the measured lines
/// (`ctx.sizes.speakers` of them: InspIRCd 3.15 reads only ~10 KB/s of one client's
/// input). Their input is read and dropped by a task each; send `QUIT` to end them.
pub(super) async fn join_speakers(
    ctx: &Ctx,
    addr: &str,
    channel: &str,
) -> anyhow::Result<Vec<Writer>> {
    let mut speakers = Vec::new();
    for s in 0..ctx.sizes.speakers {
        let mut c = Conn::connect(addr, Some(source_ip(30_000 + s))).await?;
        c.register(&format!("speaker{s}"), None).await?;
        c.send(format!("JOIN {channel}")).await?;
        c.expect("JOIN", Duration::from_secs(10), |l| l.command == "366")
            .await?;
        let w = c.writer.clone();
        tokio::spawn(async move { while let Ok(Some(_)) = c.next_raw().await {} });
        speakers.push(w);
    }
    Ok(speakers)
}

/// Sends `m` probe lines (`bench ID TIME words…`, Zipf words, a fixed seed) to
/// `channel` at `ctx.sizes.throughput_rate` lines per second, round-robin over the
/// speakers.
pub(super) async fn send_lines(
    ctx: &Ctx,
    speakers: &[Writer],
    channel: &str,
    m: usize,
) -> anyhow::Result<()> {
    let words = Words::new(20_000, 1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / ctx.sizes.throughput_rate));
    for id in 0..m {
        tick.tick().await;
        let text = probe_text(id as u64, &words, &mut rng);
        speakers[id % speakers.len()]
            .send(format!("PRIVMSG {channel} :{text}"))
            .await?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let ircd = Ircd::start("irc.bench").await?;
    let mut md = String::from(
        "| system | users | messages | offered msg/s | delivered | secs | deliveries/s | stored (Ferry, durable) | CPU s | CPU ms / 1,000 deliveries | of which user / kernel | clients dropped |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    eprintln!("throughput: ferry, {} users", ctx.sizes.throughput_users);
    let f = one(ctx, Kind::Ferry, &ircd).await?;
    md.push_str(&f.row);
    rows.push(f.json.clone());
    let mut targets = Vec::new();
    if ctx.sizes.znc("throughput") {
        eprintln!("throughput: znc, {} users", ctx.sizes.throughput_users);
        let z = one(ctx, Kind::Znc, &ircd).await?;
        md.push_str(&z.row);
        rows.push(z.json.clone());
        let ratio = f.cpu_ms_per_1000 / z.cpu_ms_per_1000.max(1e-9);
        targets.push(Target {
            name: format!("CPU per delivery ({} users)", ctx.sizes.throughput_users),
            target: "≤ 1/2 of ZNC's, while persisting and indexing".into(),
            measured: format!(
                "{:.2} ms vs ZNC {:.2} ms per 1,000 = {ratio:.2}",
                f.cpu_ms_per_1000, z.cpu_ms_per_1000
            ),
            met: Some(ratio <= 0.5),
        });
    }
    Ok(Section {
        name: "throughput",
        json: json!({ "rows": rows }),
        markdown: md,
        targets,
    })
}
