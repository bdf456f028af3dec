use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tracing::info;

use super::Cli;
use crate::config::{FileConfig, NodeConfig};
use crate::server::Server;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTP listen address (health, admin API, web client) [default: 127.0.0.1:8080,
    /// or the config file's `http`].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// IRC listen address for clients [default: 127.0.0.1:6667, or the config file's
    /// `irc`].
    #[arg(long, value_name = "ADDR")]
    pub irc: Option<SocketAddr>,
    /// IRC-over-TLS listen address for clients (needs --tls-cert and --tls-key)
    /// [default: off].
    #[arg(long, value_name = "ADDR")]
    pub irc_tls: Option<SocketAddr>,
    /// PEM certificate chain for --irc-tls [default: none].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --irc-tls [default: none].
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// This node's name in the node list; unique among the nodes sharing a store
    /// [default: local].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Local address for connections to IRC networks; repeat to spread users
    /// [default: the system's choice].
    #[arg(long = "source-ip", value_name = "IP")]
    pub source_ips: Vec<IpAddr>,
    /// URL other nodes and clients use to reach this node's HTTP [default: the
    /// bound --http address].
    #[arg(long, value_name = "URL")]
    pub advertise_http: Option<String>,
    /// HOST:PORT clients use to reach this node's IRC listener [default: the bound
    /// --irc address].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_irc: Option<String>,
    /// Cluster lease length in seconds: how long a node that stops heartbeating
    /// keeps its users before others adopt them [default: 15].
    #[arg(long, value_name = "S")]
    pub lease_seconds: Option<u64>,
    /// Seconds a user with every network waiting for a session slot waits before it
    /// moves to a node with a free slot for each of them [default: 30].
    #[arg(long, value_name = "S")]
    pub spill_after_seconds: Option<u64>,
    /// Rebalance by itself: every --auto-rebalance-interval-seconds the live active
    /// node with the lowest id moves users from the fullest nodes to the emptiest, as
    /// `ferry migrate rebalance` would, when they are outside the tolerance [default:
    /// off, or the config file's `[cluster] auto_rebalance`].
    #[arg(long)]
    pub auto_rebalance: bool,
    /// How often the automatic rebalance looks at the nodes, in seconds [default:
    /// 300].
    #[arg(long, value_name = "S")]
    pub auto_rebalance_interval_seconds: Option<u64>,
    /// Users one automatic rebalance round moves at most [default: 10].
    #[arg(long, value_name = "N")]
    pub auto_rebalance_max_moves: Option<usize>,
    /// How far apart the automatic rebalance leaves the nodes, in users and in
    /// sessions per network: a count (`2`) or a percentage of the mean (`10%`)
    /// [default: 10%].
    #[arg(long, value_name = "TOLERANCE")]
    pub auto_rebalance_tolerance: Option<crate::cluster::Tolerance>,
}

pub async fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let url = cli.database_url();
    if url.starts_with("sqlite://") && cli.database.is_none() {
        super::admin::create_data_dir(&cli.data_dir)?;
        // Ferry's own directory: a wider one is tightened, with a warning.
        crate::secrets::tighten(&cli.data_dir, 0o700).with_context(|| {
            format!("restricting the data directory {}", cli.data_dir.display())
        })?;
    }
    let mut cfg = NodeConfig::new(url);
    cfg.secret_key = cli.key_source();
    if let Some(path) = &cli.config {
        FileConfig::load(path)?.apply(&mut cfg)?;
    }
    if let Some(v) = args.http {
        cfg.http = v;
    }
    if let Some(v) = args.irc {
        cfg.irc = Some(v);
    }
    if let Some(v) = args.irc_tls {
        cfg.irc_tls = Some(v);
    }
    if args.tls_cert.is_some() {
        cfg.tls_cert = args.tls_cert.clone();
    }
    if args.tls_key.is_some() {
        cfg.tls_key = args.tls_key.clone();
    }
    if let Some(v) = &args.node_id {
        cfg.node_id = v.clone();
    }
    if !args.source_ips.is_empty() {
        cfg.user.source_ips = args.source_ips.clone();
    }
    if args.advertise_http.is_some() {
        cfg.advertise_http = args.advertise_http.clone();
    }
    if args.advertise_irc.is_some() {
        cfg.advertise_irc = args.advertise_irc.clone();
    }
    if let Some(s) = args.lease_seconds {
        anyhow::ensure!(s >= 1, "--lease-seconds must be at least 1");
        let old = std::mem::take(&mut cfg.cluster);
        cfg.cluster = crate::cluster::ClusterConfig {
            peer_margin: old.peer_margin,
            spill_after: old.spill_after,
            auto_rebalance: old.auto_rebalance,
            ..crate::cluster::ClusterConfig::with_lease(std::time::Duration::from_secs(s))
        };
    }
    if let Some(s) = args.spill_after_seconds {
        anyhow::ensure!(s >= 1, "--spill-after-seconds must be at least 1");
        cfg.cluster.spill_after = std::time::Duration::from_secs(s);
    }
    let auto = &mut cfg.cluster.auto_rebalance;
    if args.auto_rebalance {
        auto.enabled = true;
    }
    if let Some(s) = args.auto_rebalance_interval_seconds {
        anyhow::ensure!(
            s >= 1,
            "--auto-rebalance-interval-seconds must be at least 1"
        );
        auto.interval = std::time::Duration::from_secs(s);
    }
    if let Some(n) = args.auto_rebalance_max_moves {
        anyhow::ensure!(n >= 1, "--auto-rebalance-max-moves must be at least 1");
        auto.max_moves = n;
    }
    if let Some(t) = args.auto_rebalance_tolerance {
        auto.tolerance = t;
    }
    if cfg.writer.outage.spill_path.is_none() {
        // Per node: several nodes may share a data directory on one machine.
        cfg.writer.outage.spill_path =
            Some(cli.data_dir.join(format!("outage-{}.spill", cfg.node_id)));
    }
    // One node per SQLite database: a second `serve` on the same data directory
    // would run the same users again and fence the first. Held until we exit (the
    // kernel releases it however the process ends).
    let _lock = lock_database(&cfg.database)?;
    let running = Server::start(cfg).await?;
    println!(
        "ferry {} serving: web http://{}  irc {}{}",
        env!("CARGO_PKG_VERSION"),
        running.bound.http,
        running
            .bound
            .irc
            .map_or("off".to_owned(), |a| a.to_string()),
        running
            .bound
            .irc_tls
            .map_or(String::new(), |a| format!("  irc+tls {a}")),
    );
    shutdown_signal().await;
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The lock of a SQLite database, `<file>.lock` next to it: an exclusive `flock`
/// held as long as the returned file is open. PostgreSQL stores are shared by
/// design; there the node id is what must be unique (`server` checks it).
///
/// # Errors
/// Another process holds the lock (its PID is in the message), or the lock file
/// cannot be created.
pub fn lock_database(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;

    let Some(path) = url.strip_prefix("sqlite://") else {
        return Ok(None);
    };
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let lock_path = PathBuf::from(format!("{path}.lock"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("creating the lock file {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            anyhow::bail!(
                "another ferry serve{} is already running on this data directory ({} is \
                 locked); stop it first, or give this node its own --data-dir",
                if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (PID {pid})")
                },
                lock_path.display()
            );
        }
        return Err(anyhow::Error::new(err).context(format!("locking {}", lock_path.display())));
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Some(file))
}
