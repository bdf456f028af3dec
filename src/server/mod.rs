//! The server: what `ferry serve` runs. It opens the store, binds the listeners,
//! builds the [`Services`] every part shares, joins the cluster and runs the
//! background loops; on shutdown it releases its users for adoption.
//!
//! - `listeners`: HTTP and IRC (plain and TLS) sockets;
//! - `heartbeat`: registration, the heartbeat that renews the lease, the watchdog;
//! - `partition`: when the lease lapsed for lack of a store, keep the sessions (ride
//!   the outage out) or fence;
//! - `reconcile`: run exactly the users the store assigns to this node;
//! - `failover`: adopt the users whose owner is gone;
//! - `limits_sync`, `retention`: the limiter's cluster view, backlog retention;
//! - `spill`: move users that wait too long for a session slot to a node with room;
//! - `rebalance`: when `[cluster] auto_rebalance` is on, the automatic rebalance's
//!   rounds (only the leader acts).
//! - `upgrade`: hand the node over to a new binary in place (`ferry upgrade`).
//!
//! A node registers itself in the store (its addresses, capacity, admin URL and a
//! random admin token) and heartbeats, which renews its lease. Admin commands
//! (`ferry user add`, …) find it there and act through its admin API, so a change
//! reaches the running actors at once instead of being written behind their backs.
//!
//! Nothing below imports this module: it is the top of the import graph (with
//! `cli`, whose `serve` starts it).

mod failover;
mod heartbeat;
mod http;
mod limits_sync;
mod listeners;
mod partition;
mod rebalance;
mod reconcile;
mod retention;
mod spill;
mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use listeners::Bound;
pub use upgrade::{incoming, parked_of, Incoming, Launch, Parked, Resumed};

use crate::cluster::{self, Advertised, Lease};
use crate::config::NodeConfig;
use crate::push::PushHub;
use crate::services::{NodeIdentity, Parts, Services};
use crate::store::{Store, UserId, Writer, WriterFence};

/// How long a shutdown with the store away waits for the users to stop before the
/// writer keeps what it holds in the spill file.
const STOP_WAIT_STORE_AWAY: Duration = Duration::from_secs(3);

/// What the server's loops share.
#[derive(Clone)]
struct Ctx {
    services: Services,
    config: Arc<NodeConfig>,
    /// The admin API's URL as registered: the bound HTTP address.
    admin_url: String,
    /// Fires first on a clean shutdown: the event-loop ticker and the fenced-write
    /// watcher stop before the users do.
    loops: CancellationToken,
    /// The peer cache and the adopter's unreachable clocks (`partition`).
    partition: Arc<partition::Partition>,
}

/// A started node: its services and where it listens.
pub struct Server {
    pub services: Services,
    pub bound: Bound,
    loops: CancellationToken,
    tasks: TaskTracker,
    writer_cancel: CancellationToken,
    writer_task: JoinHandle<()>,
    ctx: Ctx,
    /// Stops the accept loops (a child of the shutdown token).
    accepting: CancellationToken,
    /// Stops the reconcile loop, the one that starts users (a child of `loops`).
    reconciling: CancellationToken,
    /// Copies of the listening sockets, for an upgrade.
    kept: Vec<(crate::upgrade::ListenerRole, std::os::fd::OwnedFd)>,
    trigger: Option<crate::upgrade::Trigger>,
    /// The parked users this process resumed at its start (an in-place upgrade).
    pub resumed: Resumed,
}

/// How [`Server::start_with`] starts.
#[derive(Default)]
pub struct StartOptions {
    /// Listening sockets handed over by the node this one replaces.
    pub inherited: Vec<(crate::upgrade::ListenerRole, std::os::fd::OwnedFd)>,
    /// This process replaces a running node with the same id (an in-place upgrade):
    /// it takes its record over instead of refusing a live id.
    pub upgrading: bool,
    /// Where `POST /api/admin/upgrade` sends its requests (`ferry serve` reads them).
    pub trigger: Option<crate::upgrade::Trigger>,
    /// Users parked by the node this one replaces: resumed on their connections
    /// before reconcile starts anyone.
    pub parked: Vec<Parked>,
    /// Told right before the first parked user is resumed; the start waits (10 s at
    /// most) until the answer says the old process has been told.
    pub resuming: Option<tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>>>,
    /// A batched handoff (`upgrade::Incoming`): once up, the start says so and
    /// resumes each batch of parked users as it comes, before reconcile starts anyone.
    pub incoming: Option<upgrade::Incoming>,
    /// The node's id clock starts above this (`upgrade::Handoff::clock`): an
    /// upgrade's two processes never give one id to two lines of a channel.
    pub ids_above: crate::store::Seq,
}

impl Server {
    /// Opens the store, binds the listeners, starts every user and the background
    /// jobs. Returns once the node serves.
    ///
    /// # Errors
    /// Fails when the store cannot be opened or a listener cannot be bound; the
    /// message names the setting.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Server> {
        Self::start_with(config, StartOptions::default()).await
    }

    /// [`Server::start`], with sockets handed over and an upgrade trigger.
    ///
    /// # Errors
    /// As [`Server::start`].
    pub async fn start_with(config: NodeConfig, opts: StartOptions) -> anyhow::Result<Server> {
        let (key, created) = config.secret_key.load(true).with_context(|| {
            format!("loading the secret key ({})", config.secret_key.describe())
        })?;
        if created {
            info!(file = %config.secret_key.describe(), key = key.id(),
                "created a new secret key: back it up, every node of a cluster needs it");
        }
        // The outage spill file says whose it is.
        let mut config = config;
        config.writer.outage.node = config.node_id.clone();
        config.writer.outage.store = config.redacted_database();
        let pending = crate::store::outage::spill_pending(&config.writer.outage);
        let store = Store::open(&config.database)
            .await
            .with_context(|| {
                let kept = if pending {
                    format!(
                        "; the outage spill file {} is kept and written back once the store answers at a start",
                        config.writer.outage.spill_path.as_deref().unwrap_or_else(|| std::path::Path::new("")).display()
                    )
                } else {
                    String::new()
                };
                format!("opening the database ({}){kept}", config.redacted_database())
            })?
            .with_secret_key(key.clone());
        // Seal what an older Ferry stored in plaintext, and check that this key opens
        // what is sealed: a node with the wrong key stops here, it never connects with
        // a garbled password.
        let report = store
            .seal_secrets()
            .await
            .context("checking the store's sealed secrets against the secret key")?;
        if report.sealed_now > 0 {
            info!(
                sealed = report.sealed_now,
                "sealed plaintext secrets in the store"
            );
        }
        // Every node of a cluster needs the same key: one whose key differs from a
        // running node's stops here, before it seals anything the others cannot open.
        let now = chrono::Utc::now();
        for n in store.nodes().await.context("reading the node list")? {
            let other = crate::secrets::token_key_id(&n.admin_token);
            if n.id != config.node_id
                && n.lease_expires_at > now
                && other.is_some_and(|id| id != key.id())
            {
                anyhow::bail!(
                    "node {:?} runs with secret key {}, this node's key is {} ({}): every node \
                     of a cluster needs the same key file (docs/operations.md, \"Secrets at rest\")",
                    n.id,
                    other.unwrap_or_default(),
                    key.id(),
                    config.secret_key.describe()
                );
            }
        }
        // What the node held when it last stopped during a store outage: written
        // back before any user actor runs (and allocates ids), exactly once.
        if pending {
            let replayed = crate::store::outage::replay(&store, &config.writer.outage)
                .await
                .context("writing back the lines held during a store outage")?;
            info!(
                lines = replayed.lines,
                gap_markers = replayed.gaps,
                set_aside = replayed.set_aside,
                "outage spill file: wrote back the lines held when the node last stopped"
            );
        }
        let fd = cluster::raise_nofile();
        // One process per SQLite database (`cli::serve::lock_database`): nobody could
        // adopt this node's users, so its lease cannot be taken (see `lease`).
        let lease = if store.backend() == "sqlite" {
            Lease::sole()
        } else {
            Lease::new()
        };
        let shutdown = CancellationToken::new();
        // The writer outlives the actors: it stops after they flushed.
        let writer_cancel = CancellationToken::new();
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let (writer, writer_task) = Writer::spawn_fenced(
            store.clone(),
            config.writer.clone(),
            writer_cancel.clone(),
            WriterFence {
                node: Arc::from(config.node_id.as_str()),
                lease: lease.clone(),
                lost: lost_tx,
            },
        );
        let (listeners, bound) =
            listeners::Listeners::bind_or_adopt(&config, opts.inherited).await?;
        let kept = listeners.keep()?;
        let idents = bound.ident.map(|_| crate::ident::Idents::default());
        let push = if config.push_enabled {
            let hub = PushHub::start(store.clone(), config.push.clone(), shutdown.clone())
                .await
                .context("starting Web Push")?;
            Some(hub)
        } else {
            None
        };

        let tasks = TaskTracker::new();
        let services = Services::new(Parts {
            node: NodeIdentity {
                id: Arc::from(config.node_id.as_str()),
                admin_token: key.new_admin_token(&config.node_id),
                advertised: Some(advertised(&config, &bound)),
                fd,
                fingerprint: config.fingerprint(),
            },
            store: store.clone(),
            writer,
            lease,
            user: config.user.clone(),
            auth: config.auth.clone(),
            accounts: config.accounts.clone(),
            idents: idents.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            push,
            from_store: vec![Box::new(
                crate::migrate::metrics::MigrationMetrics::default(),
            )],
        });
        let ctx = Ctx {
            services: services.clone(),
            admin_url: format!("http://{}", bound.http),
            loops: shutdown.child_token(),
            config: Arc::new(config),
            partition: partition::new_state(),
        };
        let s = &services;
        // Before any actor runs (the failover round may start some).
        if let Some(streams) = &s.users.config().streams {
            streams.clock().observe(opts.ids_above);
        }

        // Limits first, so the very first connects obey them.
        s.reload_limits()
            .await
            .context("loading the network limits")?;
        // Join the cluster: register (which grants the lease), adopt what needs an
        // owner, run what is ours. Then the loops keep it so.
        if !opts.upgrading {
            heartbeat::check_id_free(&ctx).await?;
        }
        let sent = Instant::now();
        heartbeat::register(&ctx).await?;
        s.lease.renew(sent, ctx.config.cluster.lease);
        if let Err(e) = failover::adopt_round(&ctx, true).await {
            warn!(node = %s.node.id, error = %e, "first failover round failed");
        }
        // An upgrade's parked users carry on on their connections: resumed before
        // reconcile, which then sees them running (same node, same epochs).
        if opts.upgrading {
            info!(node = %s.node.id, parked = opts.parked.len(),
                  "upgrade: the new process is up (store open, node registered)");
        }
        if let Some(tell) = opts.resuming {
            let (told, done) = tokio::sync::oneshot::channel();
            if tell.send(told).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
            }
        }
        let mut resumed = upgrade::resume_parked(&ctx, opts.parked).await;
        if let Some(incoming) = opts.incoming {
            resumed = upgrade::resume_batches(&ctx, incoming).await?;
        }
        reconcile::reconcile(&ctx).await?;

        let accepting = shutdown.child_token();
        listeners.serve(
            s,
            &ctx.config,
            &tasks,
            idents,
            &accepting,
            opts.trigger.clone(),
        );
        tasks.spawn(heartbeat::heartbeat(ctx.clone()));
        if !s.lease.is_sole() {
            tasks.spawn(heartbeat::watchdog(ctx.clone()));
        }
        let reconciling = ctx.loops.child_token();
        tasks.spawn(reconcile::reconcile_loop(Ctx {
            loops: reconciling.clone(),
            ..ctx.clone()
        }));
        tasks.spawn(
            s.lag
                .clone()
                .run(Duration::from_millis(250), ctx.loops.clone()),
        );
        tasks.spawn(reconcile::drop_fenced(ctx.clone(), lost_rx));
        tasks.spawn(retention::retention(ctx.clone()));
        tasks.spawn(limits_sync::limits_sync(ctx.clone()));
        tasks.spawn(spill::spill_loop(ctx.clone()));
        if ctx.config.cluster.auto_rebalance.enabled {
            tasks.spawn(rebalance::rebalance_loop(ctx.clone()));
        }
        info!(node = %s.node.id, http = %bound.http, irc = ?bound.irc, irc_tls = ?bound.irc_tls,
              ident = ?bound.ident,
              database = store.backend(), users = s.users.count(), "ferry is serving");
        Ok(Server {
            services,
            bound,
            loops: ctx.loops.clone(),
            tasks,
            writer_cancel,
            writer_task,
            ctx,
            accepting,
            reconciling,
            kept,
            trigger: opts.trigger,
            resumed,
        })
    }

    /// Stops the node: listeners close, every user QUITs upstream, the backlog is
    /// flushed, the node leaves the store's node list.
    pub async fn shutdown(self) {
        let s = self.services;
        self.loops.cancel();
        let ids: Vec<UserId> = s.users.running().iter().map(|r| r.id).collect();
        let stops = ids.into_iter().map(|id| {
            let users = s.users.clone();
            async move { users.stop(id, None).await }
        });
        // With the store away, a user's last flush waits for lines the store cannot
        // take: give the stops a moment (QUIT upstream goes first), then let the
        // writer keep what it holds in the spill file, which answers those flushes.
        let away = s.lease.riding_out() || s.writer.metrics().held_lines.get() > 0;
        let mut writer_task = Some(self.writer_task);
        if away {
            let stopped =
                tokio::time::timeout(STOP_WAIT_STORE_AWAY, futures::future::join_all(stops)).await;
            warn!(
                node = %s.node.id,
                stopped = stopped.is_ok(),
                "shutting down while the store is away: held lines stay in the outage spill file for the next start"
            );
            self.writer_cancel.cancel();
            if let Some(t) = writer_task.take() {
                let _ = t.await;
            }
        } else {
            futures::future::join_all(stops).await;
        }
        s.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
        // The websocket sessions' close frames ("the server is shutting down"), so a
        // client sees why rather than a cut connection.
        s.sockets.ended(Duration::from_secs(5)).await;
        if away {
            // Not released: their held lines are in the spill file, written back
            // with this ownership at the next start (peers adopt them after the lease
            // and margin, as after a crash). And the store is away anyway.
            return;
        }
        // Hand the users over at once: the other nodes adopt them in their next round.
        match s.store.release_node_users(&s.node.id).await {
            Ok(0) => {}
            Ok(n) => info!(node = %s.node.id, users = n, "released users for adoption"),
            Err(e) => warn!(node = %s.node.id, error = %e, "could not release users"),
        }
        let _ = s.store.remove_node(&s.node.id).await;
        let _ = s
            .store
            .report_session_counts(&s.node.id, &[], Utc::now())
            .await;
        // The writer drains its queue before it ends.
        self.writer_cancel.cancel();
        if let Some(t) = writer_task {
            let _ = t.await;
        }
    }

    /// Simulates a crash for tests: everything stops at once, no QUIT, no goodbye in
    /// the store.
    pub fn abort(self) {
        self.services.shutdown.cancel();
        self.writer_task.abort();
        drop(self.writer_cancel);
    }
}

/// The addresses this node gives out: `--advertise-http`/`--advertise-irc`, else what
/// it listens on.
fn advertised(config: &NodeConfig, bound: &Bound) -> Advertised {
    Advertised {
        http: config
            .advertise_http
            .clone()
            .unwrap_or_else(|| format!("http://{}", bound.http)),
        irc: config
            .advertise_irc
            .clone()
            .or_else(|| bound.irc.map(|a| a.to_string()))
            .unwrap_or_default(),
    }
}
