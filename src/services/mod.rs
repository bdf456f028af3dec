//! What the parts of a node share: a small cloneable set of services handed to
//! `downstream`, `http` and `migrate` (the way mini-redis hands `Db` and `Shutdown` to
//! a connection, never the listener). Nobody reaches into a central node: each part
//! takes what it needs from here, and `server` builds it once at start.
//!
//! - [`NodeIdentity`]: who this node is (id, admin token, advertised addresses, file
//!   descriptor budget, config fingerprint);
//! - the store, its group-commit writer and the clients' positions (`store::Positions`),
//!   the limiter, the lease;
//! - [`Users`]: the registry of this node's user actors (start, stop, hold, drop);
//! - [`Sockets`]: the registry of its websocket sessions (read markers, `moved`,
//!   logout and password change);
//! - the [`LoginGuard`]: login budgets and the bounded password hashing pool.
//! - [`PushHub`]: Web Push (subscriptions, active clients, the delivery worker).
//! - [`Metrics`]: its metrics registry, where every metric is named (`metrics.rs`).

mod metrics;
mod sockets;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics::{AutoRebalanceMetrics, FromStore, Metrics, Sampled, SpillMetrics};
pub use sockets::{ws_url, Control, Registration, Sockets};

use crate::auth::{self, AuthSettings, LoginGuard};
use crate::cluster::peer::StoreContact;
use crate::cluster::{self, Advertised, FdBudget, Lease, LoopLag, Owner};
use crate::config::{AccountSettings, Fingerprint, UserSettings};
use crate::limits::{self, Limiter};
use crate::push::PushHub;
use crate::secrets::{AdminToken, SecretKey};
use crate::store::{KeyLoad, NodeHealth, Positions, Store, UserId, Writer};
use crate::user::{UserConfig, Users};

/// Who this node is, as other nodes and clients see it.
#[derive(Debug)]
pub struct NodeIdentity {
    /// Its name in the cluster's node list.
    pub id: Arc<str>,
    /// Bearer token of its admin API; the store keeps only its hash, the key's id
    /// and the nonce the CLI derives it from with the secret key (`secrets.rs`).
    pub admin_token: AdminToken,
    /// Its addresses for clients; `None` when it has no listeners (embedding, tests).
    pub advertised: Option<Advertised>,
    /// What it can hold (RLIMIT_NOFILE raised at start).
    pub fd: FdBudget,
    /// Its config fingerprint, which a migration's preflight compares.
    pub fingerprint: Fingerprint,
}

/// The services of one node; cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub node: Arc<NodeIdentity>,
    pub store: Store,
    /// The node's group-commit writer: every stored line goes through it.
    pub writer: Writer,
    /// Its IRC clients' positions, noted and written together.
    pub positions: Positions,
    /// Every upstream connect of this node waits here (see `limits`).
    pub limiter: Arc<Limiter>,
    /// The node's lease; user actors and the writer check it before every write.
    pub lease: Lease,
    /// When the node last reached the store: what it tells its peers
    /// (`GET /api/admin/peer`).
    pub store_contact: StoreContact,
    /// The user actors this node runs.
    pub users: Arc<Users>,
    /// The websocket sessions this node serves.
    pub sockets: Arc<Sockets>,
    /// The event loop's measured lag, for health figures.
    pub lag: LoopLag,
    /// Every password check and hash of this node goes through it.
    pub guard: Arc<LoginGuard>,
    /// The node's metrics registry (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// Fires when the node shuts down; every task selects on it.
    pub shutdown: CancellationToken,
    /// Web Push (`None` when `[push] enabled = false`).
    pub push: Option<Arc<PushHub>>,
    /// The operator's bounds on what users change themselves (`[accounts]`).
    pub accounts: Arc<AccountSettings>,
}

/// What [`Services::new`] is built from.
pub struct Parts {
    pub node: NodeIdentity,
    pub store: Store,
    pub writer: Writer,
    pub lease: Lease,
    /// The user actors' settings; the node's limiter paces their messages by them.
    pub user: UserSettings,
    /// Login budgets, the hashing pool's size, password and session rules.
    pub auth: AuthSettings,
    pub shutdown: CancellationToken,
    /// Where the user actors' tasks are tracked.
    pub tasks: TaskTracker,
    /// The node's Web Push service, if push is on.
    pub push: Option<Arc<PushHub>>,
    /// Metric families of higher layers, read from the store at each scrape.
    pub from_store: Vec<Box<dyn FromStore>>,
    /// What users may change themselves (`[accounts]`).
    pub accounts: AccountSettings,
    /// The ident table upstream sockets are recorded in, when `[ident] listen` is set.
    pub idents: Option<crate::ident::Idents>,
}

impl Services {
    /// The services of a node: its limiter (paced by the user settings) and an empty
    /// registry of users and sockets.
    pub fn new(p: Parts) -> Services {
        let limiter = Limiter::new(limits::Defaults {
            messages_per_second: p.user.flood_rate,
            message_burst: p.user.flood_burst,
            ..limits::Defaults::default()
        });
        // Cluster-wide connect budgets are taken from the shared store.
        limiter.set_budget_store(p.store.clone());
        let mut config = UserConfig::new(&p.user, Some(limiter.clone()));
        config.push = p.push.clone();
        config.idents = p.idents.clone();
        // One id clock and one set of shared streams for every actor of the node.
        config.streams = p.user.share_channel_lines.then(|| {
            Arc::new(crate::user::Streams::with_limits(
                &p.node.id,
                Arc::new(crate::user::SeqClock::new()),
                crate::user::streams::Limits {
                    window: p.user.share_window,
                    ..Default::default()
                },
            ))
        });
        if let Some(streams) = &config.streams {
            // The writer waits for a shared line's other rows before storing it.
            p.writer.settle_with(streams.clone());
            streams
                .clone()
                .spawn_sweep(p.user.share_window * 5, p.shutdown.clone(), &p.tasks);
        }
        let config = Arc::new(config);
        let node = Arc::new(p.node);
        let sockets = Arc::new(Sockets::default());
        let permits = p.auth.hash_permits.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            auth::permits_for(cores, cluster::mem_available())
        });
        let guard = Arc::new(LoginGuard::new(p.auth, permits));
        let positions = Positions::spawn(
            p.store.clone(),
            p.lease.clone(),
            p.shutdown.clone(),
            &p.tasks,
        );
        let mut metrics = Metrics::new(metrics::Sources {
            store: &p.store,
            writer: &p.writer,
            upstream: &config.upstream_stats,
            users: &config.counters,
            websockets: &sockets.open,
            lease: &p.lease,
            positions: positions.metrics(),
        });
        login_metrics(&mut metrics, &guard);
        for families in p.from_store {
            metrics.add_from_store(families);
        }
        if let Some(hub) = &p.push {
            push_metrics(&mut metrics, hub);
        }
        let metrics = Arc::new(metrics);
        let users = Users::new(
            node.id.clone(),
            p.store.clone(),
            p.writer.clone(),
            p.lease.clone(),
            config,
            p.shutdown.clone(),
            p.tasks,
        );
        Services {
            node,
            store: p.store,
            writer: p.writer,
            positions,
            limiter,
            lease: p.lease,
            store_contact: StoreContact::new(),
            users: Arc::new(users),
            sockets,
            lag: LoopLag::default(),
            guard,
            metrics,
            shutdown: p.shutdown,
            push: p.push,
            accounts: Arc::new(p.accounts),
        }
    }

    /// Services with default settings, no listeners and a lease that never runs out,
    /// for embedding and tests that drive parts by hand (`server::Server::start` is
    /// the real entry).
    pub fn standalone(store: Store, writer: Writer, shutdown: CancellationToken) -> Services {
        let node = NodeIdentity {
            id: Arc::from("local"),
            admin_token: store
                .secret_key()
                .cloned()
                .unwrap_or_else(SecretKey::generate)
                .new_admin_token("local"),
            advertised: None,
            fd: FdBudget {
                limit: 65536,
                reserve: 64,
            },
            fingerprint: Fingerprint {
                hash: String::new(),
                summary: String::new(),
            },
        };
        Services::new(Parts {
            node,
            store,
            writer,
            lease: Lease::forever(),
            user: UserSettings::default(),
            auth: AuthSettings::default(),
            shutdown,
            tasks: TaskTracker::new(),
            push: None,
            from_store: Vec::new(),
            accounts: AccountSettings::default(),
            idents: None,
        })
    }

    /// Load and health for the heartbeat and a preflight.
    pub fn health(&self) -> NodeHealth {
        let mut h = self.users.health(self.lag.get(), cluster::rss_bytes());
        h.key_load = self
            .limiter
            .key_load()
            .into_iter()
            .map(|(k, (held, waiting))| {
                let load = KeyLoad {
                    held: i64::from(held),
                    waiting: i64::from(waiting),
                };
                (k, load)
            })
            .collect();
        h
    }

    /// Whether another downstream connection fits in the fd budget.
    pub fn has_fd_room(&self) -> bool {
        let fd = &self.node.fd;
        cluster::open_fds().map_or(true, |n| n < fd.limit.saturating_sub(fd.reserve / 2))
    }

    /// Where a user runs: this node, another one (with its addresses), or nowhere yet.
    ///
    /// # Errors
    /// Store errors, or there is no such user.
    pub async fn owner_of(&self, id: UserId) -> anyhow::Result<Owner> {
        cluster::owner_of(
            &self.store,
            &self.node.id,
            self.node.advertised.as_ref(),
            id,
        )
        .await
    }

    /// Places a new user on the active node that can connect all of its networks
    /// soonest (`cluster::plan`; by fd headroom while it has none) and starts it here
    /// if that is this node.
    ///
    /// # Errors
    /// Store errors, or no active node has room.
    pub async fn place_user(&self, id: UserId, name: &str) -> anyhow::Result<Owner> {
        let target = cluster::Snapshot::load(&self.store)
            .await?
            .plan(&[id])
            .pop()
            .and_then(|(_, t)| t)
            .context("no active node has room for another user")?;
        let owner = cluster::ownership(&self.store, id, name).await?;
        if owner.node_id.is_none() {
            self.store
                .assign_user(id, Some(&target), owner.epoch)
                .await?;
        }
        if target == *self.node.id {
            self.users.start(id, name).await?;
        }
        self.owner_of(id).await
    }

    /// Reads the network limits from the store into the limiter. Runs every
    /// `limits_interval` and right after this node's admin API changed them.
    ///
    /// # Errors
    /// When the store cannot be read; the limiter keeps its last configuration.
    pub async fn reload_limits(&self) -> anyhow::Result<()> {
        let limits = self.store.network_limits().await?;
        self.limiter.set_limits(limits);
        Ok(())
    }
}

/// The login guard's counters and the hashing pool's gauges (`auth`), read at scrape
/// time from the guard's atomics.
fn login_metrics(m: &mut Metrics, guard: &Arc<LoginGuard>) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    type Pick = fn(&auth::GuardStats) -> &AtomicU64;
    let counters: [(&'static str, &'static str, Pick); 4] = [
        (
            "ferry_login_failures",
            "Failed logins (wrong password or unknown user), every door.",
            |g| &g.failed,
        ),
        (
            "ferry_login_throttled",
            "Logins refused unchecked by an address or account budget.",
            |g| &g.throttled,
        ),
        (
            "ferry_login_busy",
            "Logins refused because the password hashing pool and its queue were full.",
            |g| &g.busy,
        ),
        (
            "ferry_login_successes",
            "Successful password checks.",
            |g| &g.succeeded,
        ),
    ];
    for (name, help, pick) in counters {
        let g = guard.clone();
        m.add(metrics::Sampled::counter(name, help, move || {
            pick(&g.stats).load(Relaxed) as f64
        }));
    }
    type Stat = fn(&auth::HasherStats) -> usize;
    let gauges: [(&'static str, &'static str, Stat); 4] = [
        (
            "ferry_password_hash_permits",
            "Password hashes that may run at once.",
            |h| h.permits,
        ),
        (
            "ferry_password_hash_active",
            "Password hashes running now.",
            |h| h.active,
        ),
        (
            "ferry_password_hash_peak",
            "The most password hashes that ever ran at once.",
            |h| h.peak,
        ),
        (
            "ferry_password_hash_waiting",
            "Password checks waiting for the pool.",
            |h| h.waiting,
        ),
    ];
    for (name, help, stat) in gauges {
        let g = guard.clone();
        m.add(metrics::Sampled::new(name, help, move || {
            Some(stat(&g.hasher.stats()) as f64)
        }));
    }
}

/// The push worker's counters (`push::PushStats`), read at scrape time.
fn push_metrics(m: &mut Metrics, hub: &Arc<PushHub>) {
    type Pick = fn((u64, u64, u64, u64)) -> u64;
    let counters: [(&'static str, &'static str, Pick); 4] = [
        ("ferry_push_sent", "Pushes a push service accepted.", |s| {
            s.0
        }),
        (
            "ferry_push_failed",
            "Pushes given up (refused, retries exhausted, endpoint not allowed).",
            |s| s.1,
        ),
        (
            "ferry_push_dropped",
            "Pushes dropped because a queue was full.",
            |s| s.2,
        ),
        (
            "ferry_push_gone",
            "Subscriptions removed because the push service said gone (404/410).",
            |s| s.3,
        ),
    ];
    for (name, help, pick) in counters {
        let stats = hub.pusher().stats().clone();
        m.add(metrics::Sampled::counter(name, help, move || {
            pick(stats.snapshot()) as f64
        }));
    }
}
