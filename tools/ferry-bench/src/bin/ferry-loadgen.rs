//! `ferry-loadgen`: realistic IRC traffic against a Ferry node.
//!
//! Starts two InspIRCd servers linked with `spanningtree` (or one with `--single`),
//! simulated people on both (see `loadgen::Mix`, `--mix FILE.toml`), and a Ferry node
//! with `--users` users, each with `--networks` networks (alternating hub and leaf)
//! and `--channels` channels picked by popularity from the people's channels. A share
//! of the users have an IRC client attached all along; the rest attach after
//! `--late-attach-secs` and catch up on their backlog. Netsplits happen every
//! `netsplit_every_secs`; with `mass_reconnect_at_secs` the hub is restarted once.
//! Prints a JSON summary. Bounded: `--duration` and `--max-events`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_bench::bouncer::{self, Bouncer, Layout};
use ferry_bench::ircd::{self, Ircd};
use ferry_bench::loadgen::{spawn_reader, Mix, People, Recorder};
use ferry_bench::words::{pick, zipf_weights};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "Realistic IRC load against a Ferry node (loopback only, bounded)")]
struct Args {
    /// Traffic mix (TOML); defaults documented in tools/README.md.
    #[arg(long)]
    mix: Option<PathBuf>,
    /// Print the default mix as TOML and exit.
    #[arg(long)]
    print_default_mix: bool,
    /// Ferry users.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Networks per user.
    #[arg(long, default_value_t = 1)]
    networks: usize,
    /// Channels per user (per network).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Share of users with a client attached from the start (0..=1).
    #[arg(long, default_value_t = 0.5)]
    always_attached: f64,
    /// When the other users' clients attach to catch up (seconds).
    #[arg(long, default_value_t = 20)]
    late_attach_secs: u64,
    /// How long the people talk (seconds).
    #[arg(long, default_value_t = 40)]
    duration: u64,
    /// At most this many people events.
    #[arg(long, default_value_t = 100_000)]
    max_events: u64,
    /// One server instead of a linked pair (no netsplits).
    #[arg(long)]
    single: bool,
    #[arg(long)]
    ferry_bin: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut mix = match &a.mix {
        Some(p) => Mix::load(p)?,
        None => Mix::default(),
    };
    if a.print_default_mix {
        print!("{}", toml::to_string_pretty(&Mix::default())?);
        return Ok(());
    }
    let ferry_bin = match a.ferry_bin.clone() {
        Some(p) => p,
        None => bouncer::find_ferry_bin()?,
    };
    let (mut hub, leaf) = if a.single {
        (Ircd::start("hub.bench").await?, None)
    } else {
        let (h, l) = Ircd::start_pair().await?;
        (h, Some(l))
    };
    if leaf.is_none() {
        mix.netsplit_every_secs = 0.0;
    }
    let mut servers = vec![hub.addr()];
    servers.extend(leaf.as_ref().map(Ircd::addr));
    eprintln!("loadgen: servers {servers:?}");

    // Ferry users pick channels by the same popularity the people use.
    let names = mix.channel_names();
    let w = zipf_weights(names.len(), mix.channel_zipf);
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix.seed + 1);
    let layout = Layout {
        users: (0..a.users)
            .map(|_| {
                let mut cs: Vec<String> = Vec::new();
                while cs.len() < a.channels.min(names.len()) {
                    let c = names[pick(&w, &mut rng)].clone();
                    if !cs.contains(&c) {
                        cs.push(c);
                    }
                }
                cs
            })
            .collect(),
    };
    let mut people = People::connect(&mix, &servers).await?;
    people.extra_targets = (0..a.users).map(|i| format!("f{i}")).collect();

    let dir = tempfile::Builder::new()
        .prefix("ferry-loadgen-")
        .tempdir()?;
    let _ = dir;
    let mut node = Bouncer::ferry_with(&ferry_bin, &servers, &layout, a.networks).await?;
    let t = Instant::now();
    let want_members = layout.memberships() * a.networks.max(1);
    let all_chans = names.clone();
    bouncer::wait_members(
        &servers[0],
        &all_chans,
        want_members,
        Duration::from_secs(300),
    )
    .await?;
    eprintln!(
        "loadgen: {} users connected and joined in {:.1} s",
        a.users,
        t.elapsed().as_secs_f64()
    );

    let cancel = CancellationToken::new();
    let live = Recorder::new(false);
    let always = ((a.users as f64) * a.always_attached.clamp(0.0, 1.0)).round() as usize;
    let mut readers = Vec::new();
    for i in 0..always {
        readers.push(spawn_reader(
            node.attach(i).await?,
            live.clone(),
            cancel.clone(),
        ));
    }
    let cpu0 = node.cpu_seconds();
    let t0 = Instant::now();
    let people_cancel = CancellationToken::new();
    let people_task = tokio::spawn({
        let c = people_cancel.clone();
        let (d, m) = (Duration::from_secs(a.duration), a.max_events);
        async move {
            let report = serde_json::to_value(people.run(d, m, &c).await);
            (people, report)
        }
    });

    // Late attach and (optionally) the mass reconnect, on their schedule.
    let mut late = serde_json::Value::Null;
    let mut mass = serde_json::Value::Null;
    let late_at = Duration::from_secs(a.late_attach_secs.min(a.duration));
    let mass_at = (mix.mass_reconnect_at_secs > 0.0)
        .then(|| Duration::from_secs_f64(mix.mass_reconnect_at_secs));
    let mut late_done = always >= a.users;
    let mut mass_done = mass_at.is_none();
    while t0.elapsed() < Duration::from_secs(a.duration) && !(late_done && mass_done) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !mass_done && t0.elapsed() >= mass_at.unwrap_or_default() {
            mass_done = true;
            eprintln!("loadgen: mass reconnect (restarting {})", hub.name);
            let t = Instant::now();
            hub.restart().await?;
            let server_back = t.elapsed().as_secs_f64();
            let back = bouncer::wait_members(
                &servers[0],
                &all_chans,
                want_members,
                Duration::from_secs(300),
            )
            .await;
            mass = serde_json::json!({
                "restarted": hub.name, "server_back_secs": server_back,
                "ferry_users_back": back.is_ok(), "all_rejoined_secs": t.elapsed().as_secs_f64(),
            });
        }
        if !late_done && t0.elapsed() >= late_at {
            late_done = true;
            let rec = Recorder::new(false);
            let t = Instant::now();
            let mut rs = Vec::new();
            for i in always..a.users {
                rs.push(spawn_reader(
                    node.attach(i).await?,
                    rec.clone(),
                    cancel.clone(),
                ));
            }
            // Caught up when no line arrived for 300 ms (live traffic keeps flowing, so
            // this is approximate; bounded to 10 s).
            let mut last = 0;
            let mut quiet_since = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = rec.lines.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= Duration::from_millis(300) {
                    break;
                }
            }
            late = serde_json::json!({
                "clients": a.users - always, "lines_on_attach": last,
                "catch_up_secs": (quiet_since - t).as_secs_f64(),
            });
            readers.extend(rs);
        }
    }
    let (mut people, report) = people_task.await?;
    people_cancel.cancel();
    let report = report?;
    people.quit_all().await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = node.cpu_seconds() - cpu0;
    let rss = node.rss_bytes();
    let stored = node.ferry_metric("ferry_store_write_messages_total").await;
    let connected = node
        .ferry_metric("ferry_upstreams{state=\"connected\"}")
        .await;
    cancel.cancel();
    for r in readers {
        let _ = r.await;
    }
    node.stop(Duration::from_secs(30)).await;
    let s = ircd::stats(&servers[0], &[]).await.ok();
    let summary = serde_json::json!({
        "mix": mix,
        "ferry": { "users": a.users, "networks_per_user": a.networks, "channels_per_user": a.channels,
                   "rss_bytes": rss, "cpu_secs": cpu, "cpu_percent": cpu / elapsed * 100.0,
                   "stored_messages": stored, "upstreams_connected_at_end": connected },
        "attached": { "always": always, "lines": live.lines.load(Ordering::Relaxed),
                      "dropped": live.closed.load(Ordering::Relaxed) },
        "late_attach": late,
        "mass_reconnect": mass,
        "people": report,
        "servers": servers, "server_users_after": s.map(|s| s.users),
        "elapsed_secs": elapsed,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    let _ = rng.gen::<u8>();
    Ok(())
}
