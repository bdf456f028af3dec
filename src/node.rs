//! A node: the process that runs user actors, listeners and background jobs,
//! and the registry through which they find each other.
//!
//! A node registers itself in the store (its addresses, capacity, admin URL and a
//! random admin token) and heartbeats, which renews its lease (see `cluster`). Admin
//! commands (`ferry user add`, …) find it there and act through its admin API, so a
//! change reaches the running actors at once instead of being written behind their
//! backs.
//!
//! Which users a node runs is decided by the store's owner rows: [`Node::reconcile`]
//! runs exactly the users assigned to this node, each with the epoch read there.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::cluster::{self, FdBudget, Lease, LoopLag};
use crate::config::NodeConfig;
use crate::limits::{self, Limiter};
use crate::store::{node_state, Fence, NodeHealth, NodeRecord, Store, UserId, Writer, WriterFence};
use crate::user::{self, UserHandle};

/// A user actor this node runs.
struct RunningUser {
    handle: UserHandle,
    cancel: CancellationToken,
    /// The ownership epoch it was started with.
    epoch: i64,
    /// Its upstream sessions as (network address, source IP), for the node's load
    /// figures (as loaded at start).
    sessions: Vec<(String, String)>,
}

/// Where a user runs, for routing clients (`Node::owner_of`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// This node runs the user.
    pub local: bool,
    /// The owning node, `None` while nobody owns the user (failover pending).
    pub node_id: Option<String>,
    /// The owner's advertised HTTP base URL.
    pub http_url: Option<String>,
    /// The owner's advertised IRC `HOST:PORT`.
    pub irc_addr: Option<String>,
}

pub struct Node {
    pub id: String,
    pub store: Store,
    pub writer: Writer,
    pub config: NodeConfig,
    /// Fires when the node shuts down; every task selects on it.
    pub shutdown: CancellationToken,
    /// Bearer token of the admin API, published in the store for the CLI.
    pub admin_token: String,
    /// The node's lease; user actors and the writer check it before every write.
    pub lease: Lease,
    /// What this node can hold (RLIMIT_NOFILE raised at start).
    pub fd: FdBudget,
    /// Fires first on a clean shutdown: the cluster loops stop before the users do.
    loops: CancellationToken,
    lag: LoopLag,
    bound: OnceLock<Bound>,
    /// Serialises actor starts, so a reconcile round and a direct start never run
    /// two actors for one user.
    pub(crate) starting: tokio::sync::Mutex<()>,
    users: RwLock<HashMap<UserId, RunningUser>>,
    /// Users a migration is handing over (released here, or reserved for adoption
    /// here): reconcile leaves them alone until the hold ends or expires.
    pub(crate) holds: crate::migrate::Holds,
    /// Every upstream connect of this node waits here (see `limits`).
    pub limiter: Arc<Limiter>,
    user_config: Arc<user::UserConfig>,
    tasks: TaskTracker,
}

pub type NodeRef = Arc<Node>;

/// The addresses a started node actually listens on (useful with port 0).
#[derive(Clone, Debug)]
pub struct Bound {
    pub http: SocketAddr,
    pub irc: Option<SocketAddr>,
    pub irc_tls: Option<SocketAddr>,
}

/// A started node: its handle and where it listens.
pub struct Running {
    pub node: NodeRef,
    pub bound: Bound,
    writer_cancel: CancellationToken,
    writer_task: JoinHandle<()>,
}

impl Node {
    /// A node with default settings and no listeners, for embedding and
    /// tests that drive parts by hand; `Node::start` is the real entry.
    pub fn new(store: Store, writer: Writer, shutdown: CancellationToken) -> Node {
        let config = NodeConfig::new(String::new());
        let (limiter, user_config) = limiter_for(&config);
        Node {
            id: config.node_id.clone(),
            store,
            writer,
            limiter,
            user_config,
            config,
            loops: shutdown.child_token(),
            shutdown,
            admin_token: hex::encode(rand::random::<[u8; 32]>()),
            lease: Lease::forever(),
            fd: FdBudget {
                limit: 65536,
                reserve: 64,
            },
            lag: LoopLag::default(),
            bound: OnceLock::new(),
            starting: tokio::sync::Mutex::new(()),
            users: RwLock::new(HashMap::new()),
            holds: crate::migrate::Holds::default(),
            tasks: TaskTracker::new(),
        }
    }

    /// Registers a running user actor so listeners can find it (tests that drive an
    /// actor by hand; it is not fenced by this node).
    pub fn insert_user(&self, handle: UserHandle) {
        let cancel = self.shutdown.child_token();
        self.users.write().unwrap().insert(
            handle.id,
            RunningUser {
                handle,
                cancel,
                epoch: 0,
                sessions: Vec::new(),
            },
        );
    }

    /// The running actor of a user, if this node runs it.
    pub fn user(&self, id: UserId) -> Option<UserHandle> {
        self.users
            .read()
            .unwrap()
            .get(&id)
            .filter(|r| !r.handle.is_closed())
            .map(|r| r.handle.clone())
    }

    /// Starts a user's actor on this node if this node owns the user, claiming it
    /// first when nobody does.
    ///
    /// # Errors
    /// Fails when another node owns the user, or its networks cannot be loaded.
    pub async fn start_user(&self, id: UserId, name: &str) -> anyhow::Result<UserHandle> {
        if let Some(h) = self.user(id) {
            return Ok(h);
        }
        // Claim the user if nobody owns it; this node's own failover round may claim
        // it at the same moment, so look again after a lost compare-and-set.
        let mut epoch = None;
        for _ in 0..3 {
            let owner = self
                .store
                .owner(id)
                .await?
                .with_context(|| format!("no user {name:?}"))?;
            match owner.node_id.as_deref() {
                Some(n) if n == self.id => {
                    epoch = Some(owner.epoch);
                    break;
                }
                None => {
                    if let Some(e) = self
                        .store
                        .assign_user(id, Some(&self.id), owner.epoch)
                        .await?
                    {
                        epoch = Some(e);
                        break;
                    }
                }
                Some(other) => anyhow::bail!("user {name:?} is owned by node {other:?}"),
            }
        }
        let epoch = epoch.with_context(|| format!("user {name:?}: ownership keeps changing"))?;
        if let Some(h) = self.user(id) {
            if self.users.read().unwrap().get(&id).map(|r| r.epoch) == Some(epoch) {
                return Ok(h);
            }
        }
        self.run_user(id, name, epoch).await
    }

    /// Runs a user's actor with the ownership epoch `epoch` (replacing an actor of
    /// another epoch).
    pub(crate) async fn run_user(
        &self,
        id: UserId,
        name: &str,
        epoch: i64,
    ) -> anyhow::Result<UserHandle> {
        let _one_at_a_time = self.starting.lock().await;
        if let Some(r) = self.users.read().unwrap().get(&id) {
            if r.epoch == epoch && !r.handle.is_closed() {
                return Ok(r.handle.clone());
            }
        }
        // A reconcile round may act on an owner list read before a handover
        // began or ended: look again now, under the start lock, so a user being
        // released (held) or already given away is never connected a second time.
        anyhow::ensure!(
            !self.holds.is_held(id),
            "user {name:?} is being handed over; not starting it"
        );
        let owner = self.store.owner(id).await?;
        anyhow::ensure!(
            owner.as_ref().is_some_and(|o| o.node_id.as_deref() == Some(self.id.as_str()) && o.epoch == epoch),
            "user {name:?} is no longer owned by this node at epoch {epoch}; not starting it"
        );
        self.drop_user(id);
        anyhow::ensure!(
            self.lease.is_valid(),
            "this node does not hold its lease; not starting user {name:?}"
        );
        let networks = self.store.networks(id).await?;
        let sessions = networks
            .iter()
            .filter(|n| n.enabled)
            .map(|n| {
                let ip = n
                    .source_ip
                    .clone()
                    .or_else(|| self.user_config.source_ip(id).map(|ip| ip.to_string()))
                    .unwrap_or_else(|| "default".to_owned());
                (n.addr.clone(), ip)
            })
            .collect();
        let cancel = self.shutdown.child_token();
        let owned = user::Owned {
            fence: Fence {
                user: id,
                node: Arc::from(self.id.as_str()),
                epoch,
            },
            lease: self.lease.clone(),
        };
        let (handle, task) = user::spawn(
            id,
            name,
            self.store.clone(),
            self.writer.clone(),
            self.user_config.clone(),
            cancel.clone(),
            owned,
        )
        .await?;
        self.tasks.spawn(async move {
            let _ = task.await;
        });
        let replaced = self.users.write().unwrap().insert(
            id,
            RunningUser {
                handle: handle.clone(),
                cancel,
                epoch,
                sessions,
            },
        );
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
        info!(node = %self.id, user = %name, epoch, "user started");
        Ok(handle)
    }

    /// Releases a user's session (QUIT upstream, flush) and forgets the actor.
    pub async fn stop_user(&self, id: UserId) -> Option<user::UserSnapshot> {
        self.stop_user_with(id, None).await
    }

    /// Like [`Node::stop_user`], with a QUIT message of its own (a migration's).
    pub async fn stop_user_with(
        &self,
        id: UserId,
        quit: Option<String>,
    ) -> Option<user::UserSnapshot> {
        let entry = self.users.write().unwrap().remove(&id);
        let r = entry?;
        let snapshot = r.handle.stop(quit).await.ok();
        r.cancel.cancel();
        snapshot
    }

    /// Settings and shared state of this node's user actors.
    pub fn user_config(&self) -> &user::UserConfig {
        &self.user_config
    }

    /// Drops a user's actor at once: connections closed, no QUIT, nothing written.
    /// For a user this node no longer owns, or may no longer act for.
    pub fn drop_user(&self, id: UserId) -> bool {
        let entry = self.users.write().unwrap().remove(&id);
        match entry {
            Some(r) => {
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// The lease is gone: drop every actor at once (no QUIT, no writes).
    pub fn lose_lease(&self, why: &str) {
        self.lease.revoke();
        let dropped: Vec<RunningUser> = self
            .users
            .write()
            .unwrap()
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in &dropped {
            r.cancel.cancel();
        }
        error!(node = %self.id, users = dropped.len(), reason = why, "lease lost: dropped every session without writing");
    }

    pub fn user_count(&self) -> usize {
        self.users.read().unwrap().len()
    }

    /// [`Node::reconcile`] when the users this node owns may differ from the ones it
    /// runs: a full comparison when `full`, otherwise only when the store's summary
    /// of them ([`crate::store::Store::owned_fingerprint`]) differs from the running
    /// ones'. An idle node then reads one row per round instead of every user it owns.
    ///
    /// # Errors
    /// Store errors; the next round tries again.
    pub async fn reconcile_if_changed(&self, full: bool) -> anyhow::Result<()> {
        if !full {
            let stored = self.store.owned_fingerprint(&self.id).await?;
            if stored == self.running_fingerprint() {
                return Ok(());
            }
        }
        self.reconcile().await
    }

    /// The summary of the users running here, comparable with the store's.
    fn running_fingerprint(&self) -> crate::store::OwnedFingerprint {
        let users = self.users.read().unwrap();
        let mut f = crate::store::OwnedFingerprint::default();
        for (id, r) in users.iter().filter(|(_, r)| !r.handle.is_closed()) {
            f.count += 1;
            f.epochs += r.epoch;
            f.users += id;
        }
        f
    }

    /// Runs exactly the users whose owner row names this node: starts the missing
    /// ones (and ones whose epoch changed or whose actor ended), stops the others.
    ///
    /// # Errors
    /// Store errors; the next round tries again.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let owned = self.store.owned_users(&self.id).await?;
        let want: HashMap<UserId, (String, i64)> = owned
            .into_iter()
            .map(|o| (o.user_id, (o.user_name, o.epoch)))
            .collect();
        let running: Vec<(UserId, i64, bool)> = self
            .users
            .read()
            .unwrap()
            .iter()
            .map(|(id, r)| (*id, r.epoch, r.handle.is_closed()))
            .collect();
        let held = self.holds.active();
        for (id, epoch, closed) in running {
            if held.contains(&id) {
                continue;
            }
            match want.get(&id) {
                Some((_, e)) if *e == epoch && !closed => {}
                Some(_) => {
                    self.drop_user(id);
                }
                None if closed => {
                    self.drop_user(id);
                }
                None => {
                    // Assigned elsewhere (a move): release it properly.
                    info!(node = %self.id, user = id, "user assigned elsewhere; stopping it here");
                    self.stop_user(id).await;
                }
            }
        }
        let mut to_start: Vec<(UserId, String, i64)> = {
            let users = self.users.read().unwrap();
            want.into_iter()
                .filter(|(id, (_, epoch))| {
                    !users
                        .get(id)
                        .is_some_and(|r| r.epoch == *epoch && !r.handle.is_closed())
                })
                .map(|(id, (name, epoch))| (id, name, epoch))
                .collect()
        };
        if to_start.len() > 1 {
            // Recently active users first: their connects queue in the limiter
            // in this order (a node restart with many users).
            let order: HashMap<UserId, usize> = self
                .store
                .users_by_recent_activity()
                .await?
                .into_iter()
                .enumerate()
                .map(|(i, u)| (u.id, i))
                .collect();
            to_start.sort_by_key(|(id, _, _)| order.get(id).copied().unwrap_or(usize::MAX));
        }
        for (id, name, epoch) in to_start {
            if !self.lease.is_valid() {
                break;
            }
            if held.contains(&id) {
                continue;
            }
            if let Err(e) = self.run_user(id, &name, epoch).await {
                warn!(node = %self.id, user = %name, error = %e, "could not start user");
            }
        }
        Ok(())
    }

    /// Places a new user on the active node with the most headroom (this one when it
    /// is the best, or alone) and starts it here if that is this node.
    ///
    /// # Errors
    /// Store errors, or no active node has room.
    pub async fn place_user(&self, id: UserId, name: &str) -> anyhow::Result<Owner> {
        let nodes = self.store.nodes().await?;
        let live = self.store.live_active_nodes().await?;
        let owners = self.store.ownerships().await?;
        let cands = cluster::candidates(&nodes, &live, &owners);
        let target = cluster::plan(&[id], &cands)
            .pop()
            .and_then(|(_, t)| t)
            .context("no active node has room for another user")?;
        let owner = self
            .store
            .owner(id)
            .await?
            .with_context(|| format!("no user {name:?}"))?;
        if owner.node_id.is_none() {
            self.store
                .assign_user(id, Some(&target), owner.epoch)
                .await?;
        }
        if target == self.id {
            self.start_user(id, name).await?;
        }
        self.owner_of(id).await
    }

    /// Where a user runs: this node, another one (with its addresses), or nowhere yet.
    ///
    /// # Errors
    /// Store errors, or there is no such user.
    pub async fn owner_of(&self, id: UserId) -> anyhow::Result<Owner> {
        let owner = self
            .store
            .owner(id)
            .await?
            .with_context(|| format!("no user {id}"))?;
        let Some(node_id) = owner.node_id else {
            return Ok(Owner {
                local: false,
                node_id: None,
                http_url: None,
                irc_addr: None,
            });
        };
        if node_id == self.id {
            return Ok(Owner {
                local: true,
                http_url: self.bound.get().map(|b| self.advertised_http(b)),
                irc_addr: self.bound.get().map(|b| self.advertised_irc(b)),
                node_id: Some(node_id),
            });
        }
        let rec = self
            .store
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.id == node_id);
        Ok(Owner {
            local: false,
            http_url: rec.as_ref().map(|n| n.http_addr.clone()),
            irc_addr: rec.map(|n| n.irc_addr).filter(|a| !a.is_empty()),
            node_id: Some(node_id),
        })
    }

    /// Load and health for the heartbeat.
    pub fn health(&self) -> NodeHealth {
        let users = self.users.read().unwrap();
        let mut per_network: BTreeMap<String, i64> = BTreeMap::new();
        let mut per_ip: BTreeMap<String, i64> = BTreeMap::new();
        let mut sessions = 0;
        for r in users.values() {
            for (addr, ip) in &r.sessions {
                sessions += 1;
                *per_network.entry(addr.clone()).or_default() += 1;
                *per_ip.entry(ip.clone()).or_default() += 1;
            }
        }
        NodeHealth {
            users: users.len() as i64,
            sessions,
            sessions_per_network: per_network,
            sessions_per_ip: per_ip,
            loop_lag_ms: self.lag.get(),
            rss_bytes: cluster::rss_bytes(),
        }
    }

    /// Whether another downstream connection fits in the fd budget.
    pub fn has_fd_room(&self) -> bool {
        cluster::open_fds().map_or(true, |n| {
            n < self.fd.limit.saturating_sub(self.fd.reserve / 2)
        })
    }

    /// Opens the store, binds the listeners, starts every user and the
    /// background jobs. Returns once the node serves.
    ///
    /// # Errors
    /// Fails when the store cannot be opened or a listener cannot be bound;
    /// the message names the setting.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Running> {
        let store = Store::open(&config.database)
            .await
            .with_context(|| format!("opening the database ({})", config.redacted_database()))?;
        let fd = cluster::raise_nofile();
        let lease = Lease::new();
        let shutdown = CancellationToken::new();
        // The writer outlives the actors: it stops after they flushed.
        let writer_cancel = CancellationToken::new();
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel();
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

        let http = TcpListener::bind(config.http)
            .await
            .with_context(|| format!("binding the HTTP listener (--http {})", config.http))?;
        let irc = match config.irc {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the IRC listener (--irc {addr})"))?,
            ),
            None => None,
        };
        let irc_tls = match config.irc_tls {
            Some(addr) => {
                let (cert, key) = config
                    .tls_cert
                    .as_ref()
                    .zip(config.tls_key.as_ref())
                    .context("--irc-tls needs tls_cert and tls_key in the config file (or --tls-cert/--tls-key)")?;
                let acceptor = crate::downstream::tls_acceptor(cert, key)?;
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the IRC TLS listener (--irc-tls {addr})"))?;
                Some((l, acceptor))
            }
            None => None,
        };
        let bound = Bound {
            http: http.local_addr()?,
            irc: irc.as_ref().map(|l| l.local_addr()).transpose()?,
            irc_tls: irc_tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?,
        };

        let (limiter, user_config) = limiter_for(&config);
        let node = Arc::new(Node {
            id: config.node_id.clone(),
            store: store.clone(),
            writer,
            limiter,
            user_config,
            config,
            loops: shutdown.child_token(),
            shutdown: shutdown.clone(),
            admin_token: hex::encode(rand::random::<[u8; 32]>()),
            lease,
            fd,
            lag: LoopLag::default(),
            bound: OnceLock::new(),
            starting: tokio::sync::Mutex::new(()),
            users: RwLock::new(HashMap::new()),
            holds: crate::migrate::Holds::default(),
            tasks: TaskTracker::new(),
        });
        let _ = node.bound.set(bound.clone());

        // Limits first, so the very first connects obey them.
        node.reload_limits()
            .await
            .context("loading the network limits")?;
        // Join the cluster: register (which grants the lease), adopt what needs an
        // owner, run what is ours. Then the loops keep it so.
        let sent = Instant::now();
        node.register().await?;
        node.lease.renew(sent, node.config.cluster.lease);
        if let Err(e) = cluster::adopt_round(&node, true).await {
            warn!(node = %node.id, error = %e, "first failover round failed");
        }
        node.reconcile().await?;

        {
            let router = crate::http::router(node.clone());
            let sd = shutdown.clone();
            node.tasks.spawn(async move {
                let _ = axum::serve(
                    http,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await;
            });
        }
        if let Some(l) = irc {
            node.tasks.spawn(crate::downstream::serve(
                l,
                None,
                node.clone(),
                node.config.downstream.clone(),
                shutdown.clone(),
            ));
        }
        if let Some((l, acceptor)) = irc_tls {
            node.tasks.spawn(crate::downstream::serve(
                l,
                Some(acceptor),
                node.clone(),
                node.config.downstream.clone(),
                shutdown.clone(),
            ));
        }

        node.tasks.spawn(cluster::heartbeat(node.clone()));
        node.tasks.spawn(cluster::watchdog(node.clone()));
        node.tasks.spawn(cluster::reconcile_loop(node.clone()));
        node.tasks.spawn(
            node.lag
                .clone()
                .run(Duration::from_millis(250), node.loops.clone()),
        );
        {
            // Users whose writes the store refused (stale epoch) lost ownership.
            let n = node.clone();
            node.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = n.loops.cancelled() => return,
                        u = lost_rx.recv() => match u {
                            Some(u) => {
                                if n.drop_user(u) {
                                    warn!(node = %n.id, user = u, "ownership lost (fenced write); session dropped");
                                }
                            }
                            None => return,
                        },
                    }
                }
            });
        }
        node.tasks.spawn(retention(node.clone()));
        node.tasks.spawn(limits_sync(node.clone()));
        info!(node = %node.id, http = %bound.http, irc = ?bound.irc, irc_tls = ?bound.irc_tls,
              database = store.backend(), users = node.user_count(), "ferry is serving");
        Ok(Running {
            node,
            bound,
            writer_cancel,
            writer_task,
        })
    }

    fn advertised_http(&self, bound: &Bound) -> String {
        self.config
            .advertise_http
            .clone()
            .unwrap_or_else(|| format!("http://{}", bound.http))
    }

    fn advertised_irc(&self, bound: &Bound) -> String {
        self.config
            .advertise_irc
            .clone()
            .or_else(|| bound.irc.map(|a| a.to_string()))
            .unwrap_or_default()
    }

    /// Registers (or re-registers) this node as `active`, with a fresh lease.
    pub(crate) async fn register(&self) -> anyhow::Result<()> {
        let bound = self.bound.get().context("the node is not bound yet")?;
        let now = Utc::now();
        let schema_version = self.store.schema_version().await?;
        self.store
            .register_node(
                &NodeRecord {
                    id: self.id.clone(),
                    admin_url: format!("http://{}", bound.http),
                    admin_token: self.admin_token.clone(),
                    http_addr: self.advertised_http(bound),
                    irc_addr: self.advertised_irc(bound),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    state: node_state::ACTIVE.to_owned(),
                    started_at: now,
                    heartbeat_at: now,
                    source_ips: self
                        .config
                        .user
                        .source_ips
                        .iter()
                        .map(|ip| ip.to_string())
                        .collect(),
                    schema_version,
                    config_fingerprint: cluster::config_fingerprint(&self.config),
                    fd_limit: self.fd.limit as i64,
                    fd_budget: self.fd.sessions() as i64,
                    health: self.health(),
                    lease_expires_at: now,
                },
                self.config.cluster.lease,
            )
            .await?;
        Ok(())
    }
}

/// The node's limiter, and the user settings that hand it to every upstream.
fn limiter_for(config: &NodeConfig) -> (Arc<Limiter>, Arc<user::UserConfig>) {
    let limiter = Limiter::new(limits::Defaults {
        messages_per_second: config.user.flood_rate,
        message_burst: config.user.flood_burst,
        ..limits::Defaults::default()
    });
    let mut uc = config.user.clone();
    uc.limiter = Some(limiter.clone());
    (limiter, Arc::new(uc))
}

impl Node {
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

    /// Publishes this node's session counts and reads the other nodes' ones.
    async fn sync_session_counts(&self) -> anyhow::Result<()> {
        let counts: Vec<(String, String, u32)> = self
            .limiter
            .local_counts()
            .into_iter()
            .map(|c| {
                (
                    c.key,
                    c.source.map(|ip| ip.to_string()).unwrap_or_default(),
                    c.sessions,
                )
            })
            .collect();
        let now = Utc::now();
        self.store
            .report_session_counts(&self.id, &counts, now)
            .await?;
        let all = self.store.session_counts().await?;
        self.limiter.set_remote_counts(&self.id, &all, now);
        Ok(())
    }
}

impl Running {
    /// Stops the node: listeners close, every user QUITs upstream, the
    /// backlog is flushed, the node leaves the store's node list.
    pub async fn shutdown(self) {
        let node = self.node;
        node.loops.cancel();
        let ids: Vec<UserId> = node.users.read().unwrap().keys().copied().collect();
        let stops = ids.into_iter().map(|id| {
            let node = node.clone();
            async move { node.stop_user(id).await }
        });
        futures::future::join_all(stops).await;
        node.shutdown.cancel();
        node.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), node.tasks.wait()).await;
        // Hand the users over at once: the other nodes adopt them in their next round.
        match node.store.release_node_users(&node.id).await {
            Ok(0) => {}
            Ok(n) => info!(node = %node.id, users = n, "released users for adoption"),
            Err(e) => warn!(node = %node.id, error = %e, "could not release users"),
        }
        let _ = node.store.remove_node(&node.id).await;
        let _ = node
            .store
            .report_session_counts(&node.id, &[], Utc::now())
            .await;
        // The writer drains its queue before it ends.
        self.writer_cancel.cancel();
        let _ = self.writer_task.await;
    }

    /// Simulates a crash for tests: everything stops at once, no QUIT, no
    /// goodbye in the store.
    pub fn abort(self) {
        self.node.shutdown.cancel();
        self.writer_task.abort();
        drop(self.writer_cancel);
    }
}

/// Keeps the limiter in step with the cluster: limits set on any node take effect
/// here within one interval, and `sessions_total` sees the other nodes' sessions.
async fn limits_sync(node: NodeRef) {
    let mut tick = tokio::time::interval(node.config.limits_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = node.reload_limits().await {
                    warn!(node = %node.id, error = %e, "reloading network limits failed");
                }
                if let Err(e) = node.sync_session_counts().await {
                    warn!(node = %node.id, error = %e, "syncing session counts failed");
                }
            }
        }
    }
}

async fn retention(node: NodeRef) {
    let mut tick = tokio::time::interval(node.config.retention_interval);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => match node.store.enforce_retention(Utc::now()).await {
                Ok(n) => {
                    if n > 0 {
                        info!(deleted = n, "backlog retention");
                    }
                    // Keep the planner's statistics fresh as the backlog grows.
                    if let Err(e) = node.store.optimize().await {
                        warn!(error = %e, "refreshing planner statistics failed");
                    }
                }
                Err(e) => warn!(error = %e, "backlog retention failed"),
            },
        }
    }
}
