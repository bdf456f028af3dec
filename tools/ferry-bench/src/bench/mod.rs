//! The benchmarks. Each returns a [`Section`]: JSON figures, a markdown table and its
//! targets (met or not) for the report.

pub mod latency;
pub mod memory;
pub mod migration;
pub mod outage;
pub mod restart;
pub mod scratch;
pub mod search;
pub mod store;
pub mod throughput;
pub mod upgrade;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bouncer::Bouncer;
use crate::loadgen::{spawn_reader, Recorder};

/// How big each benchmark is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    pub quick: bool,
    /// Users for memory and idle CPU (each size runs both layouts).
    pub memory_users: Vec<usize>,
    /// Seconds of idle CPU sampling.
    pub idle_secs: u64,
    pub throughput_users: usize,
    pub throughput_messages: usize,
    /// Messages per second offered by the speakers, all together.
    pub throughput_rate: f64,
    pub speakers: usize,
    pub latency_fanout_users: usize,
    pub latency_samples: usize,
    pub search_messages: Vec<u64>,
    pub search_queries: usize,
    /// Users in the store benchmark's one channel (each size runs on each backend).
    pub store_users: Vec<usize>,
    /// Lines sent to that channel in the store benchmark's measured window.
    pub store_messages: usize,
    pub restart_users: usize,
    /// Source IPs the restarted node spreads its users over (127.0.0.2, .3, …).
    pub restart_source_ips: usize,
    /// The restart's limits: connects per minute per source IP, and burst.
    pub restart_connects_per_minute: f64,
    pub restart_burst: u32,
    /// Users drained in the migration benchmark (source 127.0.0.2 → targets .3, .4).
    pub migration_users: usize,
    /// The migration's limits: connects per minute per source IP, and burst.
    pub migration_connects_per_minute: f64,
    pub migration_burst: u32,
    /// `ferry migrate drain --parallel` (`None`: the tool's default).
    pub migration_parallel: Option<usize>,
    /// Users of the in-place upgrade benchmark (each size runs once), each with one
    /// attached IRC client.
    pub upgrade_users: Vec<usize>,
    /// `false`: a control run, Ferry's limits removed before the restart (the ircd
    /// keeps its own), to show what rejections look like. Normally `true`.
    pub restart_ferry_limits: bool,
    /// Measure websocket clients in the latency benchmark too.
    pub latency_ws: bool,
    /// ZNC users per process (ZNC connects one network per second per process).
    pub znc_users_per_process: usize,
    /// Benchmarks that run ZNC next to Ferry (`memory`, `throughput`, `latency`).
    pub znc_in: Vec<String>,
    pub postgres: bool,
    /// The search and store benchmarks' SQLite half.
    pub sqlite: bool,
}

impl Sizes {
    pub fn quick() -> Sizes {
        Sizes {
            quick: true,
            memory_users: vec![10],
            idle_secs: 3,
            throughput_users: 10,
            throughput_messages: 200,
            throughput_rate: 100.0,
            speakers: 4,
            latency_fanout_users: 10,
            latency_samples: 60,
            search_messages: vec![20_000],
            search_queries: 40,
            store_users: vec![10],
            store_messages: 40,
            restart_users: 10,
            restart_source_ips: 2,
            restart_connects_per_minute: 120.0,
            restart_burst: 1,
            migration_users: 8,
            migration_connects_per_minute: 120.0,
            migration_burst: 1,
            migration_parallel: None,
            upgrade_users: vec![10],
            restart_ferry_limits: true,
            latency_ws: true,
            znc_users_per_process: 5,
            znc_in: vec!["memory".into(), "throughput".into(), "latency".into()],
            postgres: true,
            sqlite: true,
        }
    }

    pub fn full() -> Sizes {
        Sizes {
            quick: false,
            memory_users: vec![1_000, 5_000],
            idle_secs: 60,
            throughput_users: 1_000,
            throughput_messages: 2_000,
            throughput_rate: 200.0,
            speakers: 8,
            latency_fanout_users: 1_000,
            latency_samples: 500,
            search_messages: vec![1_000_000, 10_000_000],
            search_queries: 200,
            store_users: vec![300, 1_000],
            store_messages: 300,
            restart_users: 1_000,
            restart_source_ips: 2,
            restart_connects_per_minute: 300.0,
            restart_burst: 10,
            migration_users: 1_000,
            migration_connects_per_minute: 120.0,
            migration_burst: 2,
            migration_parallel: None,
            upgrade_users: vec![1_000, 5_000],
            restart_ferry_limits: true,
            latency_ws: true,
            znc_users_per_process: 50,
            znc_in: vec!["memory".into(), "throughput".into(), "latency".into()],
            postgres: true,
            sqlite: true,
        }
    }
}

/// Everything a benchmark needs.
pub struct Ctx {
    pub sizes: Sizes,
    pub ferry_bin: PathBuf,
    /// PostgreSQL server to create scratch databases on.
    pub postgres_admin_url: String,
}

/// One target of the issue and how the run compares.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// `None` when not measured in this run.
    pub met: Option<bool>,
}

/// A benchmark's result.
pub struct Section {
    pub name: &'static str,
    pub json: Value,
    pub markdown: String,
    pub targets: Vec<Target>,
}

/// Attaches clients for users `0..n` (a few at a time) and starts a reader for each.
pub async fn attach_all(
    b: &Bouncer,
    n: usize,
    rec: &Arc<Recorder>,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut handles = Vec::with_capacity(n);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(25) {
        let conns = futures_join_all(chunk.iter().map(|&i| b.attach(i))).await;
        for c in conns {
            handles.push(spawn_reader(c?, rec.clone(), cancel.clone()));
        }
    }
    Ok(handles)
}

/// Runs futures concurrently on the current task and collects their outputs in order.
pub async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    let mut pinned: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}

impl Sizes {
    /// Whether `bench` runs ZNC too.
    pub fn znc(&self, bench: &str) -> bool {
        self.znc_in.iter().any(|b| b == bench)
    }
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn kib(bytes: f64) -> f64 {
    round2(bytes / 1024.0)
}

/// "met" / "NOT met" / "not measured".
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

/// Ferry's counters that move while it still works (through joins, or lines): lines read from
/// the ircd, lines handed to the backlog writer, lines committed, and the writer's
/// queue.
async fn activity(b: &Bouncer) -> Option<[f64; 4]> {
    let m = b.ferry_metrics().await.ok()?;
    let get = |name: &str| m.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    Some([
        get("ferry_upstream_lines_in_total")?,
        get("ferry_messages_stored_total")?,
        get("ferry_store_write_messages_total")? + get("ferry_store_write_dropped_total")?,
        get("ferry_store_write_queue")?,
    ])
}

/// Waits until Ferry has settled: the writer's queue is empty, every line handed to
/// it is committed, and neither count nor the lines read from the ircd moved over
/// the last second. Returns the seconds it took, `None` on timeout.
///
/// With everyone in the same channels each user's JOIN reaches every other user
/// and is stored once per user (N² rows), so RSS read right after the joins would
/// include the queues of that backlog rather than the idle per-user cost; and store
/// sizes read before everything is committed would miss rows.
pub async fn settle(b: &Bouncer, timeout: Duration) -> Option<f64> {
    wait_activity(b, timeout, |a, n| a == n && n[3] == 0.0 && n[1] == n[2]).await
}

/// Waits until Ferry has caught up with a set-up burst while background traffic goes
/// on (where [`settle`] would wait for ever): over the last second it read at most
/// `max_lines_per_sec` lines from the ircd, and its writer is less than that second's
/// intake behind (rows handed to it but not committed ≤ rows handed to it in the
/// second). Returns the seconds it took, `None` on timeout.
pub async fn caught_up(b: &Bouncer, timeout: Duration, max_lines_per_sec: f64) -> Option<f64> {
    wait_activity(b, timeout, |a, n| {
        let (read, handed, behind) = (n[0] - a[0], n[1] - a[1], n[1] - n[2]);
        read <= max_lines_per_sec && behind <= handed
    })
    .await
}

/// Samples [`activity`] every second until `done(a second ago, now)`; returns the
/// seconds it took, `None` on timeout.
async fn wait_activity(
    b: &Bouncer,
    timeout: Duration,
    done: impl Fn([f64; 4], [f64; 4]) -> bool,
) -> Option<f64> {
    let t0 = Instant::now();
    let mut last: Option<[f64; 4]> = None;
    while t0.elapsed() < timeout {
        let now = activity(b).await;
        if let (Some(a), Some(n)) = (last, now) {
            if done(a, n) {
                return Some(t0.elapsed().as_secs_f64());
            }
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// How long to wait for Ferry to settle: `FERRY_BENCH_SETTLE_SECS`, default 600.
pub fn settle_limit() -> Duration {
    Duration::from_secs(
        std::env::var("FERRY_BENCH_SETTLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    )
}

/// A `perf record` of a bouncer over a benchmark's measured window, started when
/// `FERRY_BENCH_PERF` names a directory: what explains a figure is what the process did
/// in the window, not in the set-up before it (joins, backlog replays). Writes
/// `<dir>/<name>-<pid>.data` (call graphs) and, for Ferry, `<dir>/<name>-metrics.txt`:
/// each `/metrics` counter's change over the window.
pub struct WindowProfile {
    children: Vec<std::process::Child>,
    dir: PathBuf,
    name: String,
    metrics0: Vec<(String, f64)>,
}

impl WindowProfile {
    /// Starts recording `b`'s processes, or returns `None` when the variable is unset
    /// or `b` is not Ferry (a profile's sampling costs the process it samples, so the
    /// run's figures are then not comparable; ZNC's are left clean).
    pub async fn start(b: &Bouncer, name: &str) -> Option<WindowProfile> {
        if b.kind != crate::bouncer::Kind::Ferry {
            return None;
        }
        let dir = PathBuf::from(std::env::var_os("FERRY_BENCH_PERF")?);
        std::fs::create_dir_all(&dir).ok()?;
        let metrics0 = b.ferry_metrics().await.unwrap_or_default();
        // `FERRY_BENCH_PERF_CALL_GRAPH=dwarf` unwinds with DWARF (callers in a release
        // build, which has no frame pointers); the default, `-g`, walks frame pointers.
        let call_graph = match std::env::var("FERRY_BENCH_PERF_CALL_GRAPH") {
            Ok(mode) if !mode.is_empty() => vec!["--call-graph".to_owned(), mode],
            _ => vec!["-g".to_owned()],
        };
        let children = b
            .pids()
            .into_iter()
            .filter_map(|pid| {
                let out = dir.join(format!("{name}-{pid}.data"));
                std::process::Command::new("perf")
                    .args(["record", "-q", "-e", "cpu-clock"])
                    .args(&call_graph)
                    .args(["-F", "499", "-p"])
                    .arg(pid.to_string())
                    .arg("-o")
                    .arg(out)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| eprintln!("FERRY_BENCH_PERF: perf did not start: {e}"))
                    .ok()
            })
            .collect();
        Some(WindowProfile {
            children,
            dir,
            name: name.to_owned(),
            metrics0,
        })
    }

    /// Stops the recording (SIGINT, so `perf` writes its file) and writes the metrics'
    /// changes.
    pub async fn stop(mut self, b: &Bouncer) {
        for c in &mut self.children {
            // SAFETY: kill(2) on a child this process started and has not reaped.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGINT);
            }
        }
        for mut c in self.children {
            let _ = tokio::task::spawn_blocking(move || c.wait()).await;
        }
        let before: HashMap<String, f64> = self.metrics0.into_iter().collect();
        let after = b.ferry_metrics().await.unwrap_or_default();
        let mut text = String::new();
        for (k, v) in after {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            if d != 0.0 {
                text.push_str(&format!("{k} {d}\n"));
            }
        }
        let _ = std::fs::write(self.dir.join(format!("{}-metrics.txt", self.name)), text);
    }
}
