//! The old process's side of an in-place upgrade (the protocol is in
//! `crate::upgrade`): start the new binary, have it check itself, then the barrier
//! (stop accepting, park every user — `Users::park`, in parallel, bounded —, stop
//! those that do not park, flush the writer), hand the listening sockets, the
//! data-dir lock and the parked connections over, wait for the new process to serve.
//! The new process resumes the parked users ([`resume_parked`]) before its reconcile
//! starts anyone.
//!
//! Before the barrier nothing has stopped: a refusal, a crash or silence leaves the
//! node as it was. After it (the new process failed to start) the node serves again:
//! its listeners accept again (they never closed), the parked users are resumed here
//! from the parts this process kept (sending a descriptor duplicates it: ours stay
//! open) — unless the new process had said `Resuming` (it may have read from them:
//! our parts are stale, so they are closed and reconnect) — and the reconcile loop
//! starts the others, as a restart would.
//!
//! The node keeps its id, its lease and its users' ownership epochs: the new process
//! takes the node record over (same id, no check for a live id) and runs the users
//! the store assigns to it, with their epochs; nothing is released for adoption.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use futures::StreamExt;

use super::{heartbeat, listeners, reconcile, Ctx, Server};
use crate::store::UserId;
use crate::upgrade::{
    self, Batch, Channel, Check, Counts, FdKind, Handoff, ListenerRole, Moved, MovedUser, Msg,
    Ready, RecvError, Report, Side, UpgradeRequest, UserPause, STATE_FORMAT,
};
use crate::user::ParkedUser;

/// How many users are parked at once at the barrier.
const PARK_PARALLEL: usize = 256;
/// How many parked users are resumed at once.
const RESUME_PARALLEL: usize = 64;
/// How long the old process waits for its websocket sessions' close frames.
const WEBSOCKETS_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A parked user on its way to (or back from) another actor: who, and the parts.
#[derive(Debug)]
pub struct Parked {
    pub id: UserId,
    pub name: String,
    pub parts: ParkedUser,
    /// When the old process asked it to park (microseconds since the epoch; 0:
    /// unknown).
    pub parked_us: u64,
}

/// What [`resume_parked`] did.
#[derive(Clone, Debug, Default)]
pub struct Resumed {
    pub moved: Moved,
    /// Sessions of the users that could not be resumed (closed; reconcile starts
    /// them again).
    pub failed: Counts,
    /// When the last one was reading again (microseconds since the epoch).
    pub done_us: Option<u64>,
    /// Each resumed user's own pause (its park asked → its resume done).
    pub user_pause: Option<UserPause>,
    /// Those pauses, in microseconds.
    pub gaps_us: Vec<u64>,
}

impl Resumed {
    /// Adds a later batch's.
    fn add(&mut self, r: Resumed) {
        self.moved.users += r.moved.users;
        self.moved.upstream += r.moved.upstream;
        self.moved.irc_client += r.moved.irc_client;
        self.moved.upstream_ktls += r.moved.upstream_ktls;
        self.moved.irc_client_ktls += r.moved.irc_client_ktls;
        self.failed.upstream += r.failed.upstream;
        self.failed.clients += r.failed.clients;
        self.failed.websocket += r.failed.websocket;
        self.done_us = r.done_us.or(self.done_us);
        self.gaps_us.extend(r.gaps_us);
        self.user_pause = UserPause::of(self.gaps_us.clone());
    }
}

/// Users per batch of a handoff: [`upgrade::BATCH_ENV`], else
/// [`upgrade::BATCH_USERS`].
fn batch_users() -> usize {
    std::env::var(upgrade::BATCH_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(upgrade::BATCH_USERS)
}

/// Why the new process's answer was not the one expected.
fn answer_why(answer: Result<(Msg, Vec<OwnedFd>), RecvError>) -> String {
    match answer {
        Ok((Msg::Refuse { reason }, _)) => format!("it refused: {reason}"),
        Ok((m, _)) => format!("it answered {m:?}"),
        Err(e) => e.to_string(),
    }
}

/// Reads the new process's `Resumed` for the batch sent last.
fn expect_resumed(ch: &mut Channel, timeout: Duration) -> Result<(), RecvError> {
    match ch.recv(timeout)? {
        (Msg::Resumed { .. }, _) => Ok(()),
        (other, _) => Err(RecvError::Format(format!(
            "expected the resume of a batch, got {}",
            answer_why(Ok((other, Vec::new())))
        ))),
    }
}

/// The new process's side of a batched handoff: batches of parked users as the old
/// process sends them, and what it is told back.
pub struct Incoming {
    /// Each batch, its sockets in place; closed after `Done` (or when the old
    /// process is gone or sends something else).
    pub batches: tokio::sync::mpsc::Receiver<Vec<Parked>>,
    /// Sent to the old process in order (`Up`, `Resumed`); when every sender is
    /// dropped the channel is handed back (see [`incoming`]).
    pub tell: tokio::sync::mpsc::UnboundedSender<Msg>,
}

/// How long the new process waits for each batch.
const BATCH_WAIT: Duration = Duration::from_secs(300);

/// Runs the new process's end of a batched handoff on two threads: one reads the
/// batches, one writes what [`Incoming::tell`] is given and hands the channel back
/// (for `Ready`) once nothing more is to be told.
///
/// # Errors
/// The socket cannot be duplicated.
pub fn incoming(ch: Channel) -> std::io::Result<(Incoming, tokio::task::JoinHandle<Channel>)> {
    let mut reader = ch.try_clone()?;
    let (batch_tx, batches) = tokio::sync::mpsc::channel(2);
    let (tell, mut told) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    std::thread::Builder::new()
        .name("upgrade-batches".into())
        .spawn(move || loop {
            match reader.recv(BATCH_WAIT) {
                Ok((Msg::Batch(b), fds)) => {
                    let fds = match reader.recv_fds(fds, b.fds.len(), BATCH_WAIT) {
                        Ok(fds) => fds,
                        Err(e) => {
                            warn!(error = %e, "upgrade: a batch's sockets did not come");
                            break;
                        }
                    };
                    let parked = parked_of(b.users, b.fds.into_iter().zip(fds).collect());
                    if batch_tx.blocking_send(parked).is_err() {
                        break;
                    }
                }
                Ok((Msg::Done { reconnected }, _)) => {
                    info!(
                        reconnected_upstream = reconnected.upstream,
                        reconnected_clients = reconnected.clients,
                        "upgrade: every batch received"
                    );
                    break;
                }
                Ok((other, _)) => {
                    warn!(message = ?other, "upgrade: expected a batch");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "upgrade: the old process sends no more batches");
                    break;
                }
            }
        })?;
    let writer = tokio::task::spawn_blocking(move || {
        let mut ch = ch;
        while let Some(msg) = told.blocking_recv() {
            if let Err(e) = ch.send(&msg, &[]) {
                warn!(error = %e, "upgrade: telling the old process");
            }
        }
        ch
    });
    Ok((Incoming { batches, tell }, writer))
}

/// Parked users as they arrive, each socket put in its place: an upstream's by its
/// network, a client's beside its state (a state without its socket is dropped:
/// nothing to serve it on). Listener and lock descriptors are not for here (closed).
pub fn parked_of(users: Vec<MovedUser>, fds: Vec<(FdKind, OwnedFd)>) -> Vec<Parked> {
    let mut clients: Vec<Vec<Option<std::net::TcpStream>>> = users
        .iter()
        .map(|u| (0..u.park.clients.len()).map(|_| None).collect())
        .collect();
    let mut parked: Vec<Parked> = users
        .into_iter()
        .map(|u| Parked {
            id: u.id,
            parked_us: u.parked_us,
            name: u.name,
            parts: ParkedUser {
                state: u.park,
                ..ParkedUser::default()
            },
        })
        .collect();
    for (kind, fd) in fds {
        match kind {
            FdKind::Upstream { user, network } => {
                if let Some(p) = parked.get_mut(user) {
                    p.parts
                        .sockets
                        .insert(network, std::net::TcpStream::from(fd));
                }
            }
            FdKind::IrcClient { user, client } => {
                if let Some(slot) = clients.get_mut(user).and_then(|c| c.get_mut(client)) {
                    *slot = Some(std::net::TcpStream::from(fd));
                }
            }
            FdKind::Listener { .. } | FdKind::Lock => {}
        }
    }
    for (p, sockets) in parked.iter_mut().zip(clients) {
        let states = std::mem::take(&mut p.parts.state.clients);
        for (state, socket) in states.into_iter().zip(sockets) {
            if let Some(socket) = socket {
                p.parts.state.clients.push(state);
                p.parts.client_sockets.push(socket);
            }
        }
    }
    parked
}

/// The new process's part of a batched handoff, once it is up: says so, then
/// resumes each batch as it comes and says when it did, until the old process is
/// done. [`upgrade::FAIL_AFTER_BATCHES_ENV`] makes it fail after that many.
///
/// # Errors
/// Only the test hook.
pub(super) async fn resume_batches(ctx: &Ctx, mut inc: Incoming) -> anyhow::Result<Resumed> {
    let fail_after: Option<u64> = std::env::var(upgrade::FAIL_AFTER_BATCHES_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let _ = inc.tell.send(Msg::Up);
    let mut all = Resumed::default();
    let mut n = 0u64;
    while let Some(batch) = inc.batches.recv().await {
        let r = resume_parked(ctx, batch).await;
        n += 1;
        let users = r.moved.users;
        all.add(r);
        anyhow::ensure!(
            fail_after != Some(n),
            "failing after resuming {n} batch(es) of parked users, as {} asks",
            upgrade::FAIL_AFTER_BATCHES_ENV
        );
        let _ = inc.tell.send(Msg::Resumed { users });
    }
    info!(
        batches = n,
        users = all.moved.users,
        upstream = all.moved.upstream,
        irc_clients = all.moved.irc_client,
        user_pause_p50_ms = all.user_pause.map(|p| p.p50_ms),
        user_pause_max_ms = all.user_pause.map(|p| p.max_ms),
        "upgrade: every batch resumed"
    );
    Ok(all)
}

/// Resumes parked users in this process (`downstream::resume_user`): each actor
/// carries on with its connections and clients. A user that cannot be resumed has
/// its sockets closed and is left to reconcile (it reconnects through the limiter).
///
/// Users resume side by side, [`RESUME_PARALLEL`] at a time (the registry guards
/// each user's start on its own), from the rows their actors start with read for all
/// of them in three queries (`Store::start_rows`) instead of several per user.
pub(super) async fn resume_parked(ctx: &Ctx, parked: Vec<Parked>) -> Resumed {
    let s = &ctx.services;
    let mut out = Resumed::default();
    if parked.is_empty() {
        return out;
    }
    let started = Instant::now();
    let ids: Vec<UserId> = parked.iter().map(|p| p.id).collect();
    let mut rows = match s.store.start_rows_of(&s.node.id, &ids).await {
        Ok(rows) => rows,
        Err(e) => {
            // Each user reads its own then, as a start does.
            warn!(error = %e, "upgrade: reading the parked users' rows at once failed");
            std::collections::HashMap::new()
        }
    };
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cfg = &ctx.config.downstream;
    let outcomes: Vec<_> = futures::stream::iter(parked)
        .map(|mut p| {
            p.parts.rows = rows.remove(&p.id);
            async move {
                let upstream = p.parts.sockets.len() as u64;
                let clients = p.parts.client_sockets.len() as u64;
                let ktls = (
                    p.parts
                        .state
                        .networks
                        .iter()
                        .filter(|n| n.upstream.ktls)
                        .count() as u64,
                    p.parts.state.clients.iter().filter(|c| c.ktls).count() as u64,
                );
                let r = crate::downstream::resume_user(s, cfg, p.id, &p.name, p.parts).await;
                let gap = (p.parked_us > 0).then(|| upgrade::now_us().saturating_sub(p.parked_us));
                (p.id, p.name, upstream, clients, ktls, r.map(drop), gap)
            }
        })
        .buffer_unordered(RESUME_PARALLEL)
        .collect()
        .await;
    let mut gaps = Vec::with_capacity(outcomes.len());
    for (id, name, upstream, clients, (upstream_ktls, clients_ktls), r, gap) in outcomes {
        match r {
            Ok(()) => {
                gaps.extend(gap);
                out.moved.users += 1;
                out.moved.upstream += upstream;
                out.moved.irc_client += clients;
                out.moved.upstream_ktls += upstream_ktls;
                out.moved.irc_client_ktls += clients_ktls;
            }
            Err(e) => {
                warn!(user = %name, error = %format!("{e:#}"),
                      "upgrade: could not resume a parked user; it reconnects");
                s.users.unhold(id);
                out.failed.upstream += upstream;
                out.failed.clients += clients;
            }
        }
    }
    out.done_us = Some(upgrade::now_us());
    out.user_pause = UserPause::of(gaps.clone());
    out.gaps_us = gaps;
    info!(
        user_pause_p50_ms = out.user_pause.map(|p| p.p50_ms),
        user_pause_max_ms = out.user_pause.map(|p| p.max_ms),
        users = out.moved.users,
        upstream = out.moved.upstream,
        irc_clients = out.moved.irc_client,
        failed_upstream = out.failed.upstream,
        rows_read_ms = read_ms,
        resume_ms = started.elapsed().as_secs_f64() * 1000.0,
        "upgrade: parked users resumed"
    );
    out
}

/// How this process was started: what an upgrade runs by default. Recorded at start,
/// since a replaced binary's `/proc/self/exe` reads "… (deleted)".
#[derive(Clone, Debug)]
pub struct Launch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl Launch {
    /// This process's binary and arguments.
    ///
    /// # Errors
    /// The binary's path cannot be read.
    pub fn current() -> anyhow::Result<Launch> {
        Ok(Launch {
            exe: std::env::current_exe().context("reading this binary's path")?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Runs a blocking exchange on the upgrade socket off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("upgrade socket task")
}

/// The new process, until it serves.
struct Child {
    child: std::process::Child,
}

impl Child {
    /// Ends it (if it still runs) and says how it ended.
    async fn end(mut self, kill: bool) -> String {
        blocking(move || {
            if kill {
                // Only our own child, by its handle.
                let _ = self.child.kill();
            }
            // It closed its end (exited) or was killed: reaped quickly.
            for _ in 0..50 {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return status.to_string();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            self.child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string())
        })
        .await
    }
}

impl Server {
    /// Hands this node over to the binary `req` names (default: `launch`'s). On
    /// success the new process serves and this one must end with
    /// [`Server::finish_upgrade`]; on failure this node serves on and the error
    /// says why.
    ///
    /// # Errors
    /// The new binary refused, crashed or did not answer in time; the message says
    /// which, and whether the node had stopped its users (then it restarted them).
    pub async fn upgrade(
        &mut self,
        launch: &Launch,
        req: &UpgradeRequest,
        lock: Option<&std::fs::File>,
    ) -> anyhow::Result<Report> {
        let started = Instant::now();
        let timeout = req.timeout();
        let binary = req.binary.clone().unwrap_or_else(|| launch.exe.clone());
        let node = self.services.node.id.to_string();
        info!(node = %node, binary = %binary.display(), "upgrade: starting the new binary");
        let (channel, theirs) = Channel::pair().context("creating the upgrade socket")?;
        let child = upgrade::spawn(&binary, &launch.args, &theirs)
            .with_context(|| format!("starting {}", binary.display()))?;
        drop(theirs);
        let child = Child { child };

        // 1. The check: nothing has stopped yet.
        let hello = Msg::Hello {
            format: STATE_FORMAT,
            version: upgrade::version(),
            pid: std::process::id(),
        };
        let (mut channel, answer) = blocking(move || {
            let mut ch = channel;
            let r = ch
                .send(&hello, &[])
                .map_err(RecvError::from)
                .and_then(|()| ch.recv(timeout));
            (ch, r)
        })
        .await;
        let check = match answer {
            Ok((Msg::Check(c), _)) => c,
            Ok((Msg::Refuse { reason }, _)) => {
                child.end(false).await;
                anyhow::bail!("the new binary refused: {reason}; this node serves on, unchanged");
            }
            Ok((other, _)) => {
                child.end(true).await;
                anyhow::bail!(
                    "the new binary answered {other:?} instead of its check; this node serves on, unchanged"
                );
            }
            Err(RecvError::Timeout(t)) => {
                let status = child.end(true).await;
                anyhow::bail!(
                    "the new binary did not answer its check within {t:?} (killed: {status}); \
                     this node serves on, unchanged"
                );
            }
            Err(e) => {
                let status = child.end(false).await;
                anyhow::bail!(
                    "the new binary ended before answering its check ({status}; {e}); this node \
                     serves on, unchanged"
                );
            }
        };
        if let Err(reason) = self.accepts(&check).await {
            let sent = reason.clone();
            let _ = blocking(move || channel.send(&Msg::Abort { reason: sent }, &[])).await;
            child.end(false).await;
            anyhow::bail!("{reason}; this node serves on, unchanged");
        }
        info!(node = %node, new_pid = check.pid, new_version = %check.version,
              "upgrade: the new binary passed its check; stopping here");

        // 2. The barrier: from here this process accepts nothing and starts no user.
        let s = self.services.clone();
        let before = Counts {
            upstream: u64::try_from(s.health().sessions).unwrap_or(0),
            clients: u64::try_from(s.users.config().counters.clients.get()).unwrap_or(0),
            websocket: u64::try_from(s.sockets.open.get()).unwrap_or(0),
        };
        let barrier_us = upgrade::now_us();
        self.reconciling.cancel();
        self.accepting.cancel();
        let ids: Vec<(UserId, Option<String>)> = s
            .users
            .running()
            .iter()
            .map(|r| (r.id, s.users.get(r.id).map(|h| h.name.to_string())))
            .collect();
        let users = ids.len();

        // 3. The node itself: the listening sockets and the data-dir lock. The new
        // process starts on them (store, node record) while the users run on here.
        let mut kinds = Vec::new();
        let mut fds: Vec<OwnedFd> = Vec::new();
        for (role, fd) in &self.kept {
            kinds.push(FdKind::Listener {
                role: *role,
                addr: self.addr_of(*role),
            });
            fds.push(fd.try_clone()?);
        }
        if let Some(lock) = lock {
            kinds.push(FdKind::Lock);
            fds.push(lock.as_fd().try_clone_to_owned()?);
        }
        let handoff = Msg::Handoff(Handoff {
            format: STATE_FORMAT,
            node_id: node.clone(),
            fds: kinds,
            users: Vec::new(),
            reconnected: Counts::default(),
            barrier_us,
            batched: true,
            clock: self
                .services
                .users
                .config()
                .streams
                .as_ref()
                .map_or(0, |s| s.clock().now()),
        });
        let (mut channel, up) = blocking(move || {
            let mut ch = channel;
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            let r = ch
                .send_fds(&handoff, &borrowed)
                .map_err(RecvError::from)
                .inspect(|()| info!(descriptors = borrowed.len(), "upgrade: handoff sent"))
                .and_then(|()| ch.recv(timeout));
            drop(borrowed);
            (ch, r)
        })
        .await;
        match up {
            Ok((Msg::Up, _)) => {}
            other => {
                let why = answer_why(other);
                return Err(self
                    .rolled_back(lock, child, why, Vec::new(), Vec::new(), 0, users)
                    .await);
            }
        }
        info!(
            users,
            "upgrade: the new process is up; handing the users over in batches"
        );

        // 4. The users, a batch at a time: each is parked (its upstreams stop reading,
        // its clients hand their sockets back), the writer flushed (every line read
        // before the park is stored), then the batch goes — once the new process
        // said it resumed the batch before, which it did while this one was parked.
        // Each user's pause is about a batch's park and resume, not the whole run.
        let hold = timeout * 3 + Duration::from_secs(60);
        let batch = batch_users();
        let mut handed: Vec<UserId> = Vec::new();
        let mut not_parked = 0usize;
        let mut parked_upstream = 0usize;
        let mut parked_clients = 0usize;
        let mut waiting = false;
        for (seq, chunk) in ids.chunks(batch).enumerate() {
            let outcomes: Vec<(UserId, Option<String>, Option<ParkedUser>, u64)> =
                futures::stream::iter(chunk.to_vec())
                    .map(|(id, name)| {
                        let users = s.users.clone();
                        async move {
                            let asked = upgrade::now_us();
                            let parked = match name {
                                Some(_) => users.park(id, hold).await,
                                None => {
                                    // Closed already: stopped, as before.
                                    users.stop(id, None).await;
                                    None
                                }
                            };
                            (id, name, parked, asked)
                        }
                    })
                    .buffer_unordered(PARK_PARALLEL)
                    .collect()
                    .await;
            let mut parked: Vec<Parked> = Vec::new();
            for (id, name, parts, parked_us) in outcomes {
                match (name, parts) {
                    (Some(name), Some(parts)) => parked.push(Parked {
                        id,
                        name,
                        parts,
                        parked_us,
                    }),
                    // Not parked: its actor ended; started again by whoever serves
                    // next (it reconnects).
                    _ => {
                        not_parked += 1;
                        s.users.unhold(id);
                    }
                }
            }
            if let Err(e) = s.writer.flush().await {
                warn!(error = %e, "upgrade: the writer is closed");
            }
            parked_upstream += parked.iter().map(|p| p.parts.sockets.len()).sum::<usize>();
            parked_clients += parked
                .iter()
                .map(|p| p.parts.client_sockets.len())
                .sum::<usize>();
            let mut kinds = Vec::new();
            let mut moved_users = Vec::with_capacity(parked.len());
            for (i, p) in parked.iter().enumerate() {
                for network in p.parts.sockets.keys() {
                    kinds.push(FdKind::Upstream {
                        user: i,
                        network: *network,
                    });
                }
                for client in 0..p.parts.client_sockets.len() {
                    kinds.push(FdKind::IrcClient { user: i, client });
                }
                moved_users.push(MovedUser {
                    id: p.id,
                    name: p.name.clone(),
                    park: p.parts.state.clone(),
                    parked_us: p.parked_us,
                });
            }
            let msg = Msg::Batch(Batch {
                seq: seq as u64,
                fds: kinds,
                users: moved_users,
            });
            let was_waiting = waiting;
            // Borrowed (sending duplicates them): the parts stay whole here until
            // the batch went, for a resume here if the new process is gone.
            let (ch, parked, sent) = blocking(move || {
                let mut ch = channel;
                if was_waiting {
                    if let Err(e) = expect_resumed(&mut ch, timeout) {
                        return (ch, parked, Err((e, false)));
                    }
                }
                let borrowed: Vec<_> = parked
                    .iter()
                    .flat_map(|p| {
                        p.parts
                            .sockets
                            .values()
                            .map(AsFd::as_fd)
                            .chain(p.parts.client_sockets.iter().map(AsFd::as_fd))
                    })
                    .collect();
                let r = ch.send_fds(&msg, &borrowed).map_err(|e| (e.into(), true));
                drop(borrowed);
                (ch, parked, r)
            })
            .await;
            channel = ch;
            match sent {
                Ok(()) => {
                    // Ours close; the new process's copies keep the connections.
                    handed.extend(parked.into_iter().map(|p| p.id));
                    waiting = true;
                }
                Err((e, went)) => {
                    let why = e.to_string();
                    let (not_sent, gone) = if went {
                        // Part of it may have gone: the new process's now, or lost.
                        (Vec::new(), parked.into_iter().map(|p| p.id).collect())
                    } else {
                        (parked, Vec::new())
                    };
                    handed.extend(gone);
                    return Err(self
                        .rolled_back(lock, child, why, not_sent, handed, not_parked, users)
                        .await);
                }
            }
        }
        let reconnected = Counts {
            upstream: before.upstream.saturating_sub(parked_upstream as u64),
            clients: before.clients.saturating_sub(parked_clients as u64),
            websocket: before.websocket,
        };
        info!(
            users,
            parked = handed.len(),
            upstream = parked_upstream,
            irc_clients = parked_clients,
            "upgrade: users parked at the barrier"
        );
        let (ch, answer) = blocking(move || {
            let mut ch = channel;
            let r = (|| {
                if waiting {
                    expect_resumed(&mut ch, timeout)?;
                }
                ch.send(&Msg::Done { reconnected }, &[])?;
                loop {
                    match ch.recv(timeout) {
                        Ok((Msg::Resumed { .. } | Msg::Resuming, _)) => {}
                        other => break other,
                    }
                }
            })();
            (ch, r)
        })
        .await;
        drop(ch);
        let ready: Ready = match answer {
            Ok((Msg::Ready(r), _)) => r,
            other => {
                let why = answer_why(other);
                return Err(self
                    .rolled_back(lock, child, why, Vec::new(), handed, not_parked, users)
                    .await);
            }
        };
        // The new process runs on after this one exits: not waited for.
        drop(child);
        let mut moved = self
            .kept
            .iter()
            .map(|(role, _)| (role.name().to_owned(), 1))
            .fold(std::collections::BTreeMap::new(), |mut m, (k, v)| {
                *m.entry(k).or_insert(0) += v;
                m
            });
        moved.insert("upstream".to_owned(), ready.moved.upstream);
        moved.insert("irc_client".to_owned(), ready.moved.irc_client);
        // Subsets of the two above: TLS sessions that moved as kernel TLS.
        moved.insert("upstream_ktls".to_owned(), ready.moved.upstream_ktls);
        moved.insert("irc_client_ktls".to_owned(), ready.moved.irc_client_ktls);
        let reconnected = Counts {
            upstream: reconnected.upstream + ready.failed.upstream,
            clients: reconnected.clients + ready.failed.clients,
            websocket: reconnected.websocket + ready.failed.websocket,
        };
        let report = Report {
            node,
            old: Side {
                pid: std::process::id(),
                version: upgrade::version(),
            },
            new: Side {
                pid: ready.pid,
                version: ready.version,
            },
            moved,
            reconnected,
            pause_ms: ready
                .resumed_us
                .unwrap_or(ready.accepting_us)
                .saturating_sub(barrier_us) as f64
                / 1000.0,
            accept_pause_ms: ready.accepting_us.saturating_sub(barrier_us) as f64 / 1000.0,
            user_pause: ready.user_pause,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        info!(old_pid = report.old.pid, new_pid = report.new.pid, new_version = %report.new.version,
              pause_ms = report.pause_ms, total_ms = report.total_ms, users,
              "upgrade: the new process serves; this one exits");
        Ok(report)
    }

    /// Whether this node can hand over to the binary that answered `check`.
    async fn accepts(&self, check: &Check) -> Result<(), String> {
        if check.format_max < STATE_FORMAT {
            return Err(format!(
                "the new binary ({}) reads state format {} at most, this node hands over {}",
                check.version, check.format_max, STATE_FORMAT
            ));
        }
        let have = self
            .services
            .store
            .schema_version()
            .await
            .map_err(|e| format!("reading the store's schema version: {e}"))?;
        if check.schema_known < have {
            return Err(format!(
                "the store is at schema version {have}, the new binary ({}) knows up to {}: \
                 it is older than the store",
                check.version, check.schema_known
            ));
        }
        Ok(())
    }

    fn addr_of(&self, role: ListenerRole) -> String {
        let b = &self.bound;
        let a = match role {
            ListenerRole::Http => Some(b.http),
            ListenerRole::Irc => b.irc,
            ListenerRole::IrcTls => b.irc_tls,
            ListenerRole::Ident => b.ident,
        };
        a.map(|a| a.to_string()).unwrap_or_default()
    }

    /// After a handoff that failed past the barrier: accept again on the same
    /// sockets, take the node record back, resume the `parked` users on their
    /// connections, start the others again.
    async fn resume(
        &mut self,
        lock: Option<&std::fs::File>,
        parked: Vec<Parked>,
    ) -> anyhow::Result<Resumed> {
        if let Some(lock) = lock {
            // The new process may have written its PID there.
            use std::os::unix::fs::FileExt;
            lock.set_len(0)?;
            lock.write_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        }
        let ctx: Ctx = self.ctx.clone();
        let s = &self.services;
        let kept = self
            .kept
            .iter()
            .map(|(r, fd)| Ok((*r, fd.try_clone()?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let (listeners, _) = listeners::Listeners::bind_or_adopt(&ctx.config, kept).await?;
        self.accepting = s.shutdown.child_token();
        listeners.serve(
            s,
            &ctx.config,
            &self.tasks,
            s.users.config().idents.clone(),
            &self.accepting,
            self.trigger.clone(),
        );
        heartbeat::register(&ctx).await?;
        let resumed = resume_parked(&ctx, parked).await;
        reconcile::reconcile(&ctx).await?;
        self.reconciling = self.loops.child_token();
        self.tasks.spawn(reconcile::reconcile_loop(Ctx {
            loops: self.reconciling.clone(),
            ..ctx
        }));
        warn!(node = %s.node.id, users = s.users.count(), carried_on = resumed.moved.users,
              "upgrade failed after the barrier: serving again");
        Ok(resumed)
    }

    /// The new process failed past the barrier (`why`): ends it and serves again.
    /// The users handed over to it (`handed`: the new process had their sockets and
    /// may have read from them) and those that did not park reconnect; the parked
    /// ones not sent yet (`not_sent`) are resumed here on their connections; the
    /// others never stopped. The error says how many carried on.
    #[allow(clippy::too_many_arguments)]
    async fn rolled_back(
        &mut self,
        lock: Option<&std::fs::File>,
        child: Child,
        why: String,
        not_sent: Vec<Parked>,
        handed: Vec<UserId>,
        not_parked: usize,
        users: usize,
    ) -> anyhow::Error {
        let status = child.end(true).await;
        for id in &handed {
            self.services.users.unhold(*id);
        }
        let waiting = not_sent.len();
        match self.resume(lock, not_sent).await {
            Err(e) => e.context(format!(
                "resuming after a failed upgrade (the new binary did not take over: {why}; \
                 {status})"
            )),
            Ok(r) => {
                let lost = waiting.saturating_sub(usize::try_from(r.moved.users).unwrap_or(0));
                let reconnect = (handed.len() + not_parked + lost).min(users);
                anyhow::anyhow!(
                    "the new binary did not take over ({why}; {status}); this node resumed \
                     serving: {} of its {users} user(s) carried on on their connections, the \
                     other {reconnect} reconnect",
                    users - reconnect
                )
            }
        }
    }

    /// Ends this process's part after [`Server::upgrade`] succeeded: its remaining
    /// tasks stop (the answer to `ferry upgrade` is sent first) and the writer, already
    /// flushed, closes. Unlike [`Server::shutdown`], the node stays registered and
    /// keeps its users: the new process is the node now.
    pub async fn finish_upgrade(self) {
        // Every user was parked, so every websocket session was told to reconnect
        // (1012): let their close frames go out before this process exits.
        if !self.services.sockets.ended(WEBSOCKETS_CLOSE_WAIT).await {
            warn!("upgrade: websocket sessions still open after their close; cut");
        }
        self.services.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        self.writer_cancel.cancel();
        let _ = self.writer_task.await;
    }
}
