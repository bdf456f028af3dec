//! `ferry-bench`: runs the benchmark suite and writes a report.
//!
//! `ferry-bench all [--quick]` runs everything; `ferry-bench memory|throughput|latency|
//! search|restart|migration|store|outage|upgrade` runs one. Results go to `--out` (default `results/`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use ferry_bench::bench::{self, Ctx, Section, Sizes};

#[derive(Parser, Debug)]
#[command(about = "Ferry's benchmark suite (side by side with ZNC)")]
struct Args {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "all")]
    which: Which,
    /// CI-sized run: small N, seconds not minutes.
    #[arg(long)]
    quick: bool,
    /// Results folder (JSON and report.md).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// The ferry binary (default: next to this one, or FERRY_BIN).
    #[arg(long)]
    ferry_bin: Option<PathBuf>,
    /// Users for memory/idle CPU (repeat or comma-separate), overriding the size.
    #[arg(long, value_delimiter = ',')]
    memory_users: Vec<usize>,
    /// Seconds of idle CPU sampling.
    #[arg(long)]
    idle_secs: Option<u64>,
    #[arg(long)]
    throughput_users: Option<usize>,
    #[arg(long)]
    throughput_messages: Option<usize>,
    /// Lines per second the speakers offer, all together, in the throughput and store
    /// benchmarks (default 200; `--quick` 100). The store benchmark at 1,000 users
    /// offers more than two cores deliver at 200: a lower rate measures a channel the
    /// node keeps up with.
    #[arg(long, value_parser = positive_rate)]
    throughput_rate: Option<f64>,
    #[arg(long)]
    fanout_users: Option<usize>,
    #[arg(long)]
    latency_samples: Option<usize>,
    /// Stored messages for search (comma-separated sizes).
    #[arg(long, value_delimiter = ',')]
    search_messages: Vec<u64>,
    /// Users in the store benchmark's channel (comma-separated sizes).
    #[arg(long, value_delimiter = ',')]
    store_users: Vec<usize>,
    /// Lines sent in the store benchmark's measured window.
    #[arg(long)]
    store_messages: Option<usize>,
    #[arg(long)]
    restart_users: Option<usize>,
    /// Restart: connects per minute per source IP (`ferry limits set … -R`).
    #[arg(long)]
    restart_connects_per_minute: Option<f64>,
    /// Restart: connects allowed back to back per source IP.
    #[arg(long)]
    restart_burst: Option<u32>,
    /// Restart: source IPs the node binds (127.0.0.2, .3, …).
    #[arg(long)]
    restart_source_ips: Option<usize>,
    /// Users drained in the migration benchmark.
    #[arg(long)]
    migration_users: Option<usize>,
    /// Migration: connects per minute per target source IP.
    #[arg(long)]
    migration_connects_per_minute: Option<f64>,
    /// Migration: connects allowed back to back per target source IP.
    #[arg(long)]
    migration_burst: Option<u32>,
    /// Migration: `ferry migrate drain --parallel` (default: the tool's, 8).
    #[arg(long)]
    migration_parallel: Option<usize>,
    /// Users of the in-place upgrade benchmark, one attached client each
    /// (comma-separated sizes; default 1000,5000, `--quick` 10). ZNC has no in-place
    /// upgrade: `--no-znc` changes nothing there.
    #[arg(long, value_delimiter = ',')]
    upgrade_users: Vec<usize>,
    /// Restart control run: remove Ferry's limits before the restart (the ircd keeps
    /// its own), to see the rejections a limit-less reconnect causes.
    #[arg(long)]
    restart_no_ferry_limits: bool,
    /// Skip the websocket clients in the latency benchmark.
    #[arg(long)]
    no_ws: bool,
    /// ZNC users per ZNC process (ZNC connects one network per second per process).
    #[arg(long)]
    znc_users_per_process: Option<usize>,
    /// Skip ZNC (Ferry only).
    #[arg(long)]
    no_znc: bool,
    /// Benchmarks that run ZNC too (comma-separated; default memory,throughput,latency).
    /// Each ZNC start costs ~40 s: ZNC joins channels from a 30 s timer.
    #[arg(long, value_delimiter = ',')]
    znc_in: Vec<String>,
    /// Skip PostgreSQL (the search and store benchmarks' second backend; the migration
    /// benchmark, which needs it, is then not run).
    #[arg(long)]
    no_postgres: bool,
    /// Skip SQLite in the search and store benchmarks (e.g. to run the backends as two
    /// processes).
    #[arg(long)]
    no_sqlite: bool,
    /// PostgreSQL server for scratch databases.
    #[arg(
        long,
        env = "FERRY_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Which {
    All,
    Memory,
    Throughput,
    Latency,
    Search,
    Restart,
    Migration,
    Store,
    Outage,
    Upgrade,
}

/// `--throughput-rate`: lines per second, a finite number above zero (the speakers'
/// tick is its inverse).
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err(format!("{s} is not a rate above zero")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // One secret key for every `ferry` this run starts (nodes and admin commands
    // alike), so no key file is left beside its temporary data directories.
    if std::env::var_os(ferry::secrets::KEY_ENV).is_none() {
        std::env::set_var(
            ferry::secrets::KEY_ENV,
            ferry::secrets::SecretKey::generate().to_hex(),
        );
    }
    let mut s = if a.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if !a.memory_users.is_empty() {
        s.memory_users = a.memory_users.clone();
    }
    if !a.search_messages.is_empty() {
        s.search_messages = a.search_messages.clone();
    }
    if !a.upgrade_users.is_empty() {
        s.upgrade_users = a.upgrade_users.clone();
    }
    if !a.store_users.is_empty() {
        s.store_users = a.store_users.clone();
    }
    s.store_messages = a.store_messages.unwrap_or(s.store_messages);
    s.idle_secs = a.idle_secs.unwrap_or(s.idle_secs);
    s.throughput_users = a.throughput_users.unwrap_or(s.throughput_users);
    s.throughput_messages = a.throughput_messages.unwrap_or(s.throughput_messages);
    s.throughput_rate = a.throughput_rate.unwrap_or(s.throughput_rate);
    s.latency_fanout_users = a.fanout_users.unwrap_or(s.latency_fanout_users);
    s.latency_samples = a.latency_samples.unwrap_or(s.latency_samples);
    s.restart_users = a.restart_users.unwrap_or(s.restart_users);
    s.restart_connects_per_minute = a
        .restart_connects_per_minute
        .unwrap_or(s.restart_connects_per_minute);
    s.restart_burst = a.restart_burst.unwrap_or(s.restart_burst);
    s.restart_source_ips = a.restart_source_ips.unwrap_or(s.restart_source_ips);
    s.migration_users = a.migration_users.unwrap_or(s.migration_users);
    s.migration_connects_per_minute = a
        .migration_connects_per_minute
        .unwrap_or(s.migration_connects_per_minute);
    s.migration_burst = a.migration_burst.unwrap_or(s.migration_burst);
    s.migration_parallel = a.migration_parallel.or(s.migration_parallel);
    s.restart_ferry_limits = !a.restart_no_ferry_limits;
    s.latency_ws = !a.no_ws;
    s.znc_users_per_process = a.znc_users_per_process.unwrap_or(s.znc_users_per_process);
    if !a.znc_in.is_empty() {
        s.znc_in = a.znc_in.clone();
    }
    if a.no_znc {
        s.znc_in.clear();
    }
    s.postgres = !a.no_postgres;
    s.sqlite = !a.no_sqlite;
    if !s.znc_in.is_empty() {
        ferry_bench::bouncer::check_znc()?;
    }
    let ferry_bin = match a.ferry_bin.clone() {
        Some(p) => p,
        None => ferry_bench::bouncer::find_ferry_bin()?,
    };
    let ctx = Ctx {
        sizes: s.clone(),
        ferry_bin,
        postgres_admin_url: a.postgres.clone(),
    };
    let run = |w: Which| a.which == Which::All || a.which == w;
    let mut sections: Vec<Section> = Vec::new();
    let mut failures = Vec::new();
    macro_rules! bench {
        ($w:expr, $name:literal, $f:expr) => {
            if run($w) {
                let t = std::time::Instant::now();
                match $f.await {
                    Ok(sec) => {
                        eprintln!("{} done in {:.1} s", $name, t.elapsed().as_secs_f64());
                        println!("\n## {}\n\n{}", $name, sec.markdown);
                        sections.push(sec);
                    }
                    Err(e) => {
                        eprintln!("{} FAILED: {e:#}", $name);
                        failures.push(($name.to_string(), format!("{e:#}")));
                    }
                }
            }
        };
    }
    bench!(Which::Memory, "memory", bench::memory::run(&ctx));
    bench!(
        Which::Throughput,
        "throughput",
        bench::throughput::run(&ctx)
    );
    bench!(Which::Latency, "latency", bench::latency::run(&ctx));
    bench!(Which::Search, "search", bench::search::run(&ctx));
    bench!(Which::Restart, "restart", bench::restart::run(&ctx));
    bench!(Which::Migration, "migration", bench::migration::run(&ctx));
    bench!(Which::Store, "store", bench::store::run(&ctx));
    bench!(Which::Outage, "outage", bench::outage::run(&ctx));
    bench!(Which::Upgrade, "upgrade", bench::upgrade::run(&ctx));
    let md = ferry_bench::report::write(&a.out, &s, &sections, &failures)?;
    let targets = md
        .split("## Targets")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .unwrap_or("");
    println!("\n## Targets{targets}");
    eprintln!("report: {}", a.out.join("report.md").display());
    if !failures.is_empty() {
        anyhow::bail!("{} benchmark(s) failed", failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_must_be_above_zero() {
        assert_eq!(positive_rate("25"), Ok(25.0));
        assert_eq!(positive_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "inf", "NaN", "fast"] {
            assert!(positive_rate(bad).is_err(), "{bad} accepted");
        }
        let e = Args::try_parse_from(["ferry-bench", "--throughput-rate", "0", "store"]);
        assert!(e.is_err(), "clap takes the check");
    }
}
