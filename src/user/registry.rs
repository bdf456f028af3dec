//! The users this node runs: one actor per user, started, stopped and dropped only
//! here, each with the ownership epoch it runs under.
//!
//! Starts of one user are serialised by a guard private to this registry (per user:
//! `starts`), so a reconcile round, a direct start, an upgrade's resume and a
//! migration's hold never run two actors for one user or start one that is being
//! handed over; starts of different users run side by side. Users a migration is handing over are *held*: nothing
//! starts them until the hold ends or expires (a dead driver never leaves a user
//! disconnected for long).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::starts::Starts;
use super::{Owned, ParkedUser, UserConfig, UserHandle, UserSnapshot};
use crate::cluster::Lease;
use crate::store::{Fence, NodeHealth, OwnedFingerprint, Store, UserId, Writer};

/// A user actor this node runs.
struct Running {
    handle: UserHandle,
    cancel: CancellationToken,
    /// The ownership epoch it was started with.
    epoch: i64,
    /// Its upstream sessions as (network address, source IP), for the node's load
    /// figures (loaded at start, counted again when a network is added or removed:
    /// [`Users::refresh_sessions`]).
    sessions: Vec<(String, String)>,
}

/// A running user as [`Users::running`] lists it.
#[derive(Clone, Copy, Debug)]
pub struct RunningUser {
    pub id: UserId,
    /// The ownership epoch it runs under.
    pub epoch: i64,
    /// Its actor has ended (stopped, dropped or fenced) but it is still listed.
    pub closed: bool,
}

/// The registry of this node's user actors.
pub struct Users {
    /// This node's id: the owner an actor's fence names.
    node: Arc<str>,
    /// Where ownership is checked and claimed, and actors load their networks.
    store: Store,
    /// The node's writer, which every actor stores through.
    writer: Writer,
    /// The node's lease: no actor starts without it, every actor checks it.
    lease: Lease,
    /// What every actor shares.
    config: Arc<UserConfig>,
    /// Every actor's cancel token is a child of it: the node's shutdown.
    shutdown: CancellationToken,
    /// Where the actors' tasks are tracked, so a shutdown can wait for them.
    tasks: TaskTracker,
    /// Serialises the starts (and holds) of each user, so a reconcile round and a
    /// direct start never run two actors for one user.
    starting: Starts,
    running: RwLock<HashMap<UserId, Running>>,
    /// Users a migration is handing over (released here, or reserved for adoption
    /// here), each until an instant.
    holds: Mutex<HashMap<UserId, Instant>>,
}

impl Users {
    /// The registry of node `node`: actors write through `writer` while `lease` holds,
    /// share `config`, end with `shutdown` and are tracked by `tasks`.
    pub fn new(
        node: Arc<str>,
        store: Store,
        writer: Writer,
        lease: Lease,
        config: Arc<UserConfig>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Users {
        Users {
            node,
            store,
            writer,
            lease,
            config,
            shutdown,
            tasks,
            starting: Starts::default(),
            running: RwLock::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
        }
    }

    /// Settings and shared state of this node's user actors.
    pub fn config(&self) -> &UserConfig {
        &self.config
    }

    /// The running actor of a user, if this node runs it.
    pub fn get(&self, id: UserId) -> Option<UserHandle> {
        self.running
            .read()
            .unwrap()
            .get(&id)
            .filter(|r| !r.handle.is_closed())
            .map(|r| r.handle.clone())
    }

    /// Registers a running user actor so listeners can find it (tests that drive an
    /// actor by hand; it is not fenced by this node).
    pub fn insert(&self, handle: UserHandle) {
        let cancel = self.shutdown.child_token();
        self.change(|running| {
            running.insert(
                handle.id,
                Running {
                    handle,
                    cancel,
                    epoch: 0,
                    sessions: Vec::new(),
                },
            )
        });
    }

    /// Starts a user's actor on this node if this node owns the user, claiming it
    /// first when nobody does.
    ///
    /// # Errors
    /// Fails when another node owns the user, or its networks cannot be loaded.
    pub async fn start(&self, id: UserId, name: &str) -> anyhow::Result<UserHandle> {
        if let Some(h) = self.get(id) {
            return Ok(h);
        }
        // Claim the user if nobody owns it; this node's own failover round may claim
        // it at the same moment, so look again after a lost compare-and-set.
        let mut epoch = None;
        for _ in 0..3 {
            let owner = crate::cluster::ownership(&self.store, id, name).await?;
            match owner.node_id.as_deref() {
                Some(n) if n == &*self.node => {
                    epoch = Some(owner.epoch);
                    break;
                }
                None => {
                    if let Some(e) = self
                        .store
                        .assign_user(id, Some(&self.node), owner.epoch)
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
        if let Some(h) = self.get(id) {
            if self.running.read().unwrap().get(&id).map(|r| r.epoch) == Some(epoch) {
                return Ok(h);
            }
        }
        self.run(id, name, epoch).await
    }

    /// Runs a user's actor with the ownership epoch `epoch` (replacing an actor of
    /// another epoch).
    ///
    /// # Errors
    /// The user is held, no longer owned here at `epoch`, the lease is not held, or
    /// its networks cannot be loaded.
    pub async fn run(&self, id: UserId, name: &str, epoch: i64) -> anyhow::Result<UserHandle> {
        let _one_at_a_time = self.starting.lock(id).await;
        if let Some(r) = self.running.read().unwrap().get(&id) {
            if r.epoch == epoch && !r.handle.is_closed() {
                return Ok(r.handle.clone());
            }
        }
        // A reconcile round may act on an owner list read before a handover
        // began or ended: look again now, under the start guard, so a user being
        // released (held) or already given away is never connected a second time.
        anyhow::ensure!(
            !self.is_held(id),
            "user {name:?} is being handed over; not starting it"
        );
        self.checked_launch(id, name, epoch, None).await
    }

    /// Parks a user's session (see `user::actor::park`): its plaintext upstream
    /// connections stop at one barrier and are handed back with the state to carry
    /// on; the actor ends. The user is held meanwhile (for `for_`), so nothing here
    /// starts it again with new connections; [`Users::resume`] ends the hold.
    /// `None` when this node does not run the user, or its actor did not park
    /// within `for_` (it is dropped then: connections closed, nothing more written).
    pub async fn park(&self, id: UserId, for_: Duration) -> Option<ParkedUser> {
        self.hold(id, for_).await;
        let entry = self.change(|running| running.remove(&id));
        let Some(r) = entry else {
            self.unhold(id);
            return None;
        };
        let parked = tokio::time::timeout(for_, r.handle.park())
            .await
            .ok()
            .and_then(Result::ok);
        r.cancel.cancel();
        if parked.is_none() {
            self.unhold(id);
        }
        parked
    }

    /// Runs a user's actor from parked parts ([`Users::park`], here or in the
    /// process this one handed its sockets to), at the epoch the store has for this
    /// node, and ends the hold. When the parts carry the user's rows
    /// ([`ParkedUser::rows`], read for many users at once) the epoch is theirs and
    /// nothing more is read here.
    ///
    /// # Errors
    /// The user is not owned by this node, the lease is not held, or the parts are
    /// not usable (the sockets are then closed: the network sees those users leave).
    pub async fn resume(
        &self,
        id: UserId,
        name: &str,
        parked: ParkedUser,
    ) -> anyhow::Result<UserHandle> {
        let _one_at_a_time = self.starting.lock(id).await;
        let started = match parked.rows.as_ref().map(|r| r.epoch) {
            Some(epoch) => {
                let networks = parked.rows.as_ref().map(|r| r.networks.clone());
                self.launch(id, name, epoch, Some(parked), networks).await
            }
            None => {
                let owner = self.store.owner(id).await?;
                match owner {
                    // Just read, under the guard.
                    Some(o) if o.node_id.as_deref() == Some(&*self.node) => {
                        self.launch(id, name, o.epoch, Some(parked), None).await
                    }
                    _ => Err(anyhow::anyhow!(
                        "user {name:?} is not owned by this node; not resuming it"
                    )),
                }
            }
        };
        self.unhold(id);
        started
    }

    /// Checks that this node still owns the user at `epoch`, then starts it
    /// ([`Users::launch`]). Call under the user's start guard.
    async fn checked_launch(
        &self,
        id: UserId,
        name: &str,
        epoch: i64,
        parked: Option<ParkedUser>,
    ) -> anyhow::Result<UserHandle> {
        let owner = self.store.owner(id).await?;
        anyhow::ensure!(
            owner
                .as_ref()
                .is_some_and(|o| o.node_id.as_deref() == Some(&*self.node) && o.epoch == epoch),
            "user {name:?} is no longer owned by this node at epoch {epoch}; not starting it"
        );
        self.launch(id, name, epoch, parked, None).await
    }

    /// Starts the actor (from parked parts when given) and registers it, its
    /// `networks` read here when not given. Call under the user's start guard,
    /// with `epoch` just read from the store.
    async fn launch(
        &self,
        id: UserId,
        name: &str,
        epoch: i64,
        parked: Option<ParkedUser>,
        networks: Option<Vec<crate::store::Network>>,
    ) -> anyhow::Result<UserHandle> {
        self.drop_user(id);
        anyhow::ensure!(
            self.lease.is_valid(),
            "this node does not hold its lease; not starting user {name:?}"
        );
        let networks = match networks {
            Some(n) => n,
            None => self.store.networks(id).await?,
        };
        let sessions = self.sessions_of(id, &networks);
        let cancel = self.shutdown.child_token();
        let owned = Owned {
            fence: Fence {
                user: id,
                node: self.node.clone(),
                epoch,
            },
            lease: self.lease.clone(),
        };
        let resumed = parked.is_some();
        let (handle, task) = super::spawn_from(
            id,
            name,
            self.store.clone(),
            self.writer.clone(),
            self.config.clone(),
            cancel.clone(),
            owned,
            parked,
        )
        .await?;
        self.tasks.spawn(async move {
            let _ = task.await;
        });
        let replaced = self.change(|running| {
            running.insert(
                id,
                Running {
                    handle: handle.clone(),
                    cancel,
                    epoch,
                    sessions,
                },
            )
        });
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
        if resumed {
            // An upgrade resumes thousands: its summary is logged once.
            debug!(node = %self.node, user = %name, epoch, "user resumed");
        } else {
            info!(node = %self.node, user = %name, epoch, "user started");
        }
        Ok(handle)
    }

    /// A user's upstream sessions as (network address, source IP): one per enabled
    /// network.
    fn sessions_of(&self, id: UserId, networks: &[crate::store::Network]) -> Vec<(String, String)> {
        networks
            .iter()
            .filter(|n| n.enabled)
            .map(|n| {
                let ip = n
                    .source_ip
                    .clone()
                    .or_else(|| self.config.source_ip(id).map(|ip| ip.to_string()))
                    .unwrap_or_else(|| "default".to_owned());
                (n.addr.clone(), ip)
            })
            .collect()
    }

    /// Counts a running user's sessions again from its networks in the store: called
    /// wherever they change (a network added or removed), so the load figures are
    /// not the ones of the actor's start.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn refresh_sessions(&self, id: UserId) -> anyhow::Result<()> {
        let networks = self.store.networks(id).await?;
        let sessions = self.sessions_of(id, &networks);
        if let Some(r) = self.running.write().unwrap().get_mut(&id) {
            r.sessions = sessions;
        }
        Ok(())
    }

    /// Releases a user's session (QUIT upstream, with `quit` or the configured
    /// message; flush) and forgets the actor. Returns what it handed over, if it ran.
    pub async fn stop(&self, id: UserId, quit: Option<String>) -> Option<UserSnapshot> {
        let entry = self.change(|running| running.remove(&id));
        let r = entry?;
        let snapshot = r.handle.stop(quit).await.ok();
        r.cancel.cancel();
        snapshot
    }

    /// Drops a user's actor at once: connections closed, no QUIT, nothing written.
    /// For a user this node no longer owns, or may no longer act for. Returns whether
    /// it ran.
    pub fn drop_user(&self, id: UserId) -> bool {
        let entry = self.change(|running| running.remove(&id));
        match entry {
            Some(r) => {
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Drops every actor at once (the lease is gone). Returns how many there were.
    pub fn drop_all(&self) -> usize {
        let dropped: Vec<Running> =
            self.change(|running| running.drain().map(|(_, r)| r).collect());
        for r in &dropped {
            r.cancel.cancel();
        }
        dropped.len()
    }

    /// Changes the running actors, keeping `ferry_users_running` in step.
    fn change<T>(&self, f: impl FnOnce(&mut HashMap<UserId, Running>) -> T) -> T {
        let mut running = self.running.write().unwrap();
        let out = f(&mut running);
        let n = i64::try_from(running.len()).unwrap_or(i64::MAX);
        self.config.counters.users_running.set(n);
        out
    }

    /// How many users this node runs.
    pub fn count(&self) -> usize {
        self.running.read().unwrap().len()
    }

    /// The users this node runs, with their epochs.
    pub fn running(&self) -> Vec<RunningUser> {
        self.running
            .read()
            .unwrap()
            .iter()
            .map(|(id, r)| RunningUser {
                id: *id,
                epoch: r.epoch,
                closed: r.handle.is_closed(),
            })
            .collect()
    }

    /// The summary of the live users running here, comparable with the store's
    /// ([`Store::owned_fingerprint`]).
    pub fn fingerprint(&self) -> OwnedFingerprint {
        let running = self.running.read().unwrap();
        let mut f = OwnedFingerprint::default();
        for (id, r) in running.iter().filter(|(_, r)| !r.handle.is_closed()) {
            f.count += 1;
            f.epochs += r.epoch;
            f.users += id;
        }
        f
    }

    /// The node's load (users, upstream sessions per network and per source IP), with
    /// the health figures measured elsewhere.
    pub fn health(&self, loop_lag_ms: i64, rss_bytes: i64) -> NodeHealth {
        let running = self.running.read().unwrap();
        let mut per_network: BTreeMap<String, i64> = BTreeMap::new();
        let mut per_ip: BTreeMap<String, i64> = BTreeMap::new();
        let mut sessions = 0;
        for r in running.values() {
            for (addr, ip) in &r.sessions {
                sessions += 1;
                *per_network.entry(addr.clone()).or_default() += 1;
                *per_ip.entry(ip.clone()).or_default() += 1;
            }
        }
        NodeHealth {
            users: running.len() as i64,
            sessions,
            sessions_per_network: per_network,
            sessions_per_ip: per_ip,
            loop_lag_ms,
            rss_bytes,
            key_load: BTreeMap::new(),
        }
    }

    /// Holds `user` for `for_` (a migration hands it over): starts in progress finish
    /// first, later ones leave the user alone until [`Users::unhold`] or expiry.
    pub async fn hold(&self, user: UserId, for_: Duration) {
        let _starting = self.starting.lock(user).await;
        self.holds
            .lock()
            .unwrap()
            .insert(user, Instant::now() + for_);
    }

    /// Ends a hold early (the handover is done or failed).
    pub fn unhold(&self, user: UserId) {
        self.holds.lock().unwrap().remove(&user);
    }

    /// Whether `user` is held now (being handed over).
    pub fn is_held(&self, user: UserId) -> bool {
        self.holds
            .lock()
            .unwrap()
            .get(&user)
            .is_some_and(|until| *until > Instant::now())
    }

    /// The users held now (expired holds are forgotten).
    pub fn held(&self) -> HashSet<UserId> {
        let now = Instant::now();
        let mut m = self.holds.lock().unwrap();
        m.retain(|_, until| *until > now);
        m.keys().copied().collect()
    }
}
