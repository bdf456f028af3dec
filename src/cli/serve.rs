use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing::{info, warn};

use super::Cli;
use crate::config::{FileConfig, NodeConfig};
use crate::server::{Launch, Parked, Server, StartOptions};
use crate::upgrade::{self, Channel, FdKind, Handoff, ListenerRole, Msg, Ready, UpgradeRequest};

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
    // Before anything can replace the binary: what an upgrade starts by default.
    let launch = Launch::current()?;
    // Started by `ferry upgrade` of a running node: its end of the upgrade socket.
    let incoming = Channel::from_env()
        .transpose()
        .context("opening the upgrade socket")?;
    let cfg = match node_config(cli, args) {
        Ok(cfg) => cfg,
        Err(e) => {
            if let Some(mut ch) = incoming {
                let reason = format!("its configuration does not load: {e:#}");
                let _ = ch.send(&Msg::Refuse { reason }, &[]);
            }
            return Err(e);
        }
    };
    let (trigger, mut requests) = tokio::sync::mpsc::channel(1);
    let mut opts = StartOptions {
        trigger: Some(trigger),
        ..StartOptions::default()
    };
    // One node per SQLite database: a second `serve` on the same data directory
    // would run the same users again and fence the first. Held until we exit (the
    // kernel releases it however the process ends); an upgrade hands it over.
    let (lock, taking_over) = match incoming {
        None => (lock_database(&cfg.database)?, None),
        Some(ch) => {
            let (ch, handoff, lock, inherited, parked) = take_over(ch, &cfg).await?;
            opts.inherited = inherited;
            opts.upgrading = true;
            opts.parked = parked;
            opts.ids_above = handoff.clock.saturating_add(crate::store::SEQ_RESERVE);
            let ch = if handoff.batched {
                // The users come in batches once we are up (`server::incoming`);
                // the channel comes back when nothing more is to be told.
                let (incoming, ch) =
                    crate::server::incoming(ch).context("reading the handoff's batches")?;
                opts.incoming = Some(incoming);
                tokio::spawn(async move { ch.await.expect("upgrade socket task") })
            } else {
                // Tells the old process, right before the first parked connection
                // is touched, that its copy of the parts is stale from then on.
                let (tell, told) =
                    tokio::sync::oneshot::channel::<tokio::sync::oneshot::Sender<()>>();
                opts.resuming = Some(tell);
                tokio::spawn(async move {
                    let Ok(done) = told.await else { return ch };
                    let (ch, sent) = tokio::task::spawn_blocking(move || {
                        let mut ch = ch;
                        let r = ch.send(&Msg::Resuming, &[]);
                        (ch, r)
                    })
                    .await
                    .expect("upgrade socket task");
                    if let Err(e) = sent {
                        warn!(error = %e, "upgrade: telling the old process we resume");
                    }
                    let _ = done.send(());
                    ch
                })
            };
            (lock, Some((ch, handoff)))
        }
    };
    let mut running = Server::start_with(cfg, opts).await?;
    if let Some((ch, handoff)) = taking_over {
        let mut ch = ch.await.context("upgrade socket task")?;
        anyhow::ensure!(
            std::env::var_os(upgrade::FAIL_AFTER_RESUME_ENV).is_none(),
            "failing after resuming the parked users, as {} asks",
            upgrade::FAIL_AFTER_RESUME_ENV
        );
        let r = running.resumed.clone();
        let ready = Msg::Ready(Ready {
            pid: std::process::id(),
            version: upgrade::version(),
            accepting_us: upgrade::now_us(),
            users: running.services.users.count() as u64,
            moved: r.moved,
            failed: r.failed,
            resumed_us: r.done_us,
            user_pause: r.user_pause,
        });
        tokio::task::spawn_blocking(move || ch.send(&ready, &[]))
            .await?
            .context("confirming the upgrade to the old process")?;
        info!(pid = std::process::id(), version = %upgrade::version(),
              reconnected_upstreams = handoff.reconnected.upstream + r.failed.upstream,
              moved_upstreams = r.moved.upstream, moved_irc_clients = r.moved.irc_client,
              "took the node over from the old process");
    }
    println!(
        "ferry {} serving: web http://{}  irc {}{}",
        upgrade::version(),
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
    let Signals { mut term, mut usr2 } = Signals::new()?;
    loop {
        let (req, reply) = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr2.recv() => (UpgradeRequest::default(), None),
            Some((req, reply)) = requests.recv() => (req, Some(reply)),
        };
        match running.upgrade(&launch, &req, lock.as_ref()).await {
            Ok(report) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(report));
                }
                running.finish_upgrade().await;
                return Ok(());
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "upgrade failed");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(format!("{e:#}")));
                }
            }
        }
    }
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// The node's settings: the config file's, then the flags.
fn node_config(cli: &Cli, args: &ServeArgs) -> anyhow::Result<NodeConfig> {
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
    Ok(cfg)
}

/// The new process's side of an upgrade: answer the check, then take the handoff
/// (listening sockets, the data-dir lock, the parked users and their sockets).
async fn take_over(
    mut ch: Channel,
    cfg: &NodeConfig,
) -> anyhow::Result<(
    Channel,
    Handoff,
    Option<std::fs::File>,
    Vec<(ListenerRole, std::os::fd::OwnedFd)>,
    Vec<Parked>,
)> {
    let url = cfg.database.clone();
    let node_id = cfg.node_id.clone();
    // Room for every socket handed over (the start raises it again, harmlessly).
    crate::cluster::raise_nofile();
    let (ch, mut handoff, fds) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (hello, _) = ch
            .recv(HELLO_WAIT)
            .context("waiting for the running node's hello")?;
        let answer = upgrade::answer_hello(&hello, &url);
        ch.send(&answer, &[])
            .context("answering the running node's check")?;
        if let Msg::Refuse { reason } = answer {
            anyhow::bail!("refused the upgrade: {reason}");
        }
        match ch
            .recv(HANDOFF_WAIT)
            .context("waiting for the running node's handoff")?
        {
            (Msg::Handoff(h), fds) => {
                let fds = ch
                    .recv_fds(fds, h.fds.len(), HELLO_WAIT)
                    .context("receiving the handed-over sockets")?;
                Ok((ch, h, fds))
            }
            (Msg::Abort { reason }, _) => {
                anyhow::bail!("the running node called the upgrade off: {reason}")
            }
            (other, _) => anyhow::bail!("expected the handoff, got {other:?}"),
        }
    })
    .await??;
    info!(
        users = handoff.users.len(),
        descriptors = fds.len(),
        "upgrade: handoff received"
    );
    anyhow::ensure!(
        std::env::var_os(upgrade::FAIL_AFTER_HANDOFF_ENV).is_none(),
        "failing after the handoff, as {} asks",
        upgrade::FAIL_AFTER_HANDOFF_ENV
    );
    anyhow::ensure!(
        handoff.node_id == node_id,
        "the handoff is for node {:?}, this one is {node_id:?}",
        handoff.node_id
    );
    anyhow::ensure!(
        handoff.fds.len() == fds.len(),
        "the handoff names {} sockets, {} came",
        handoff.fds.len(),
        fds.len()
    );
    let mut lock = None;
    let mut inherited = Vec::new();
    let mut users = Vec::new();
    for (kind, fd) in handoff.fds.iter().zip(fds) {
        match kind {
            FdKind::Listener { role, .. } => inherited.push((*role, fd)),
            FdKind::Lock => {
                use std::io::{Seek, Write};
                let mut file = std::fs::File::from(fd);
                file.set_len(0)?;
                file.rewind()?;
                writeln!(file, "{}", std::process::id())?;
                lock = Some(file);
            }
            FdKind::Upstream { .. } | FdKind::IrcClient { .. } => users.push((kind.clone(), fd)),
        }
    }
    // A handoff of format 3 carries the users itself (a batched one has none).
    let parked = crate::server::parked_of(std::mem::take(&mut handoff.users), users);
    Ok((ch, handoff, lock, inherited, parked))
}

/// How long a new process waits for the running node's hello, and for its handoff
/// (the running node stops its users in between).
const HELLO_WAIT: Duration = Duration::from_secs(60);
const HANDOFF_WAIT: Duration = Duration::from_secs(600);

/// The signals `serve` acts on: SIGINT and SIGTERM stop the node, SIGUSR2 upgrades it.
struct Signals {
    term: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            usr2: signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?,
        })
    }
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
