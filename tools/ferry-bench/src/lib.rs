//! Ferry's load generator and benchmark suite.
//!
//! Everything runs on loopback (127.0.0.0/8) and is bounded in count and time.
//!
//! - [`ircd`]: real InspIRCd servers (one, or a hub and a leaf linked with
//!   `spanningtree` for netsplits), configured in temp dirs; what the integration test
//!   fixtures know, factored out for a program.
//! - [`client`]: a minimal raw IRC client (bytes in, bytes out; answers PING).
//! - [`bouncer`]: the systems under test, run as separate processes so their RSS and
//!   CPU can be read from `/proc`: Ferry (`ferry serve`, users provisioned through its
//!   store; or a cluster of [`bouncer::Node`]s on PostgreSQL) and ZNC (Debian `znc`,
//!   config generated).
//! - [`loadgen`]: simulated people (heavy-tailed channels and rates, joins, parts,
//!   quits, nicks, away, topics, modes, CTCP ACTIONs, Latin-1 and long lines,
//!   netsplits, mass reconnects) and Ferry users with attached clients.
//! - [`bench`]: the benchmarks (memory, idle CPU, throughput, latency, search, restart
//!   storm with configured limits, migration drain on a PostgreSQL cluster, in-place
//!   upgrade), each returning figures for the [`report`].
//! - [`procfs`]: RSS and CPU time of a process.
//! - [`ws`]: a websocket client of Ferry's `/ws` (login, resume, probe arrivals).

pub mod bench;
pub mod bouncer;
pub mod client;
pub mod ircd;
pub mod loadgen;
pub mod procfs;
pub mod report;
pub mod words;
pub mod ws;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Microseconds since the first call in this process: the one clock every timestamp in
/// a message text and every receive time is taken from, so they compare directly.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Percentile (0..=100) of a sample, nearest-rank; 0 for an empty sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
