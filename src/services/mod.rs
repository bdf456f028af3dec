//! What the parts of a node share: a small cloneable set of services handed to
//! `downstream`, `http` and `migrate` (the way mini-redis hands `Db` and `Shutdown` to
//! a connection, never the listener). Nobody reaches into a central node: each part
//! takes what it needs from here, and `server` builds it once at start.
//!
//! - [`NodeIdentity`]: who this node is (id, admin token, advertised addresses, file
//!   descriptor budget, config fingerprint);
//! - the store and its group-commit writer, the limiter, the lease;
//! - [`Users`]: the registry of this node's user actors (start, stop, hold, drop);
//! - [`Sockets`]: the registry of its websocket sessions (read markers, `moved`).

mod sockets;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use sockets::{ws_url, Control, Registration, Sockets};

use crate::cluster::{self, Advertised, FdBudget, Lease, LoopLag, Owner};
use crate::config::{Fingerprint, UserSettings};
use crate::limits::{self, Limiter};
use crate::store::{NodeHealth, Store, UserId, Writer};
use crate::user::{UserConfig, Users};

/// Who this node is, as other nodes and clients see it.
#[derive(Debug)]
pub struct NodeIdentity {
    /// Its name in the cluster's node list.
    pub id: Arc<str>,
    /// Bearer token of its admin API, published in the store for the CLI.
    pub admin_token: String,
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
    /// Every upstream connect of this node waits here (see `limits`).
    pub limiter: Arc<Limiter>,
    /// The node's lease; user actors and the writer check it before every write.
    pub lease: Lease,
    /// The user actors this node runs.
    pub users: Arc<Users>,
    /// The websocket sessions this node serves.
    pub sockets: Arc<Sockets>,
    /// The event loop's measured lag, for health figures.
    pub lag: LoopLag,
    /// Fires when the node shuts down; every task selects on it.
    pub shutdown: CancellationToken,
}

/// What [`Services::new`] is built from.
pub struct Parts {
    pub node: NodeIdentity,
    pub store: Store,
    pub writer: Writer,
    pub lease: Lease,
    /// The user actors' settings; the node's limiter paces their messages by them.
    pub user: UserSettings,
    pub shutdown: CancellationToken,
    /// Where the user actors' tasks are tracked.
    pub tasks: TaskTracker,
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
        let config = Arc::new(UserConfig::new(&p.user, Some(limiter.clone())));
        let node = Arc::new(p.node);
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
            limiter,
            lease: p.lease,
            users: Arc::new(users),
            sockets: Arc::default(),
            lag: LoopLag::default(),
            shutdown: p.shutdown,
        }
    }

    /// Services with default settings, no listeners and a lease that never runs out,
    /// for embedding and tests that drive parts by hand (`server::Server::start` is
    /// the real entry).
    pub fn standalone(store: Store, writer: Writer, shutdown: CancellationToken) -> Services {
        let node = NodeIdentity {
            id: Arc::from("local"),
            admin_token: hex::encode(rand::random::<[u8; 32]>()),
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
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    /// Load and health for the heartbeat and a preflight.
    pub fn health(&self) -> NodeHealth {
        self.users.health(self.lag.get(), cluster::rss_bytes())
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
