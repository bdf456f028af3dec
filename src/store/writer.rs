//! Group commit: one writer per node, shared by all users.
//!
//! User actors hand their messages to a [`Writer`]; its task gathers them for up to
//! `max_delay` or `max_batch` messages and commits each batch in one transaction, so the
//! database sees a few large transactions instead of one per line.
//!
//! Messages are never dropped silently. When the database fails, the batch moves to
//! the outage buffer ([`super::outage`]: memory, then a spill file, then explicit gap
//! markers) and is retried from there with backoff, in order, before anything newer;
//! meanwhile the writer keeps taking lines, so a store outage never pushes back on the
//! actors. Only a batch the database *rejects* (a constraint violation, which retrying
//! cannot fix) is split, and the messages it rejects one by one are logged and dropped.
//! A node's writer is *fenced* ([`Writer::spawn_fenced`]): it commits nothing while the
//! node's lease is not held — riding out a store outage it buffers, with the lease lost
//! it drops (the node is dropping those sessions) — and the store drops, in the same
//! transaction, messages whose ownership epoch is stale; the users concerned are
//! reported on a channel so the node stops their actors.
//!
//! Shared channel lines (`NewMessage::stream`) reach the writer as one row per user
//! who received them, from actors that handle the line at different moments. A batch
//! committed while some of an event's rows are still to come would store the event
//! with a partial audience, widened (and the partial one deleted) by a later batch:
//! per line, a member list written twice. So a batch is cut before the first row of an
//! event that may still gain members ([`Settle`], answered by the node's streams: some
//! connection confirmed it but has not queued its row yet, or some connection has not
//! moved past it and it is younger than the matching window); the rest waits for the
//! next batch, in order, so what is visible in the store of each user is always a
//! prefix of what that user's actor queued; rows after the cut of a settled line the
//! batch commits join it (`Task::complete_settled`). The streams are asked before the
//! queue is last taken from, so no row queued meanwhile is left out of its event. A
//! flush, an outage and shutdown commit everything at once, and so does a batch that waited until it holds a full batch
//! and [`WriterConfig::hold`] more rows (the actors whose rows hold it back may be
//! waiting for room in the queue).
//!
//! On shutdown the task drains what is queued and held, commits it, and exits; if the
//! database is still failing after a few last attempts, what it holds stays in the
//! outage spill file (synced), written back at the next start, and it says so; only
//! lines held without a spill file are lost (and logged).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::outage::{Held, OutageConfig};
use super::{NewMessage, Seq, Store, StoreError, StreamKey};

/// Which shared events may still gain audience members (see the module docs): the
/// live side of store-once (`user::Streams`) answers it.
pub trait Settle: Send + Sync {
    /// The id below which every event of `stream` is settled: no connection can
    /// confirm it any more (every connection of the stream moved past it, or it is
    /// older than the matching window). `Seq::MAX` when all are.
    fn settled_below(&self, stream: &StreamKey) -> Seq;
}

/// How soon a batch cut short is tried again when nothing else arrives.
const SETTLE_TICK: Duration = Duration::from_millis(50);

/// Tuning of the group-commit writer.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Most messages committed in one transaction. Batches are cut by `max_delay`
    /// while the writer keeps up; when it falls behind, the next batch takes what
    /// queued meanwhile, up to this. Bigger batches cost less per message (each
    /// commit rewrites every active user's newest index pages once), so a writer
    /// that falls behind catches up.
    pub max_batch: usize,
    /// Longest a message waits for others to share its transaction. A commit costs
    /// about the same whether it holds one line or many for each active user (it
    /// rewrites each user's newest index pages), so at moderate rates a longer
    /// delay is much cheaper. Nothing waits on it: relays go out before the store,
    /// and a flush (attach replay, CHATHISTORY, handoff) commits at once. It bounds
    /// what a crash loses.
    pub max_delay: Duration,
    /// Messages queued before `write` waits (backpressure).
    pub queue: usize,
    /// Rows kept back beyond a full batch while shared lines still gain members (see
    /// the module doc): once this many are pending, everything is committed. Under
    /// overload, the actors of a big channel drift apart by more lines than a batch
    /// holds, and each line committed early is rewritten by every later batch with
    /// more of its rows (a widened audience; docs/benchmarks.md §2). A pending row is
    /// ~0.5 KB, so this bounds that memory at ~130 MB, reached only under overload.
    pub hold: usize,
    /// What is held while the store is away (`[outage]`).
    pub outage: OutageConfig,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 16384,
            max_delay: Duration::from_millis(250),
            queue: 65536,
            hold: 262_144,
            outage: OutageConfig::default(),
        }
    }
}

/// The writer has stopped: the message (or, for `flush`, some earlier message) was not
/// committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the message writer has stopped")]
pub struct WriterClosed;

/// Counters of the writer, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: u64,
    /// Messages in them.
    pub messages: u64,
    /// How long the last commit took.
    pub last_batch: Duration,
    /// Failed commit attempts (each retried, or split when permanent).
    pub errors: u64,
    /// Messages dropped because the database rejected them or it was down at shutdown.
    pub dropped: u64,
    /// Messages refused by fencing: the lease was not held, or the user's owner epoch
    /// had moved on.
    pub fenced: u64,
}

/// What makes a writer fenced: the node's identity and lease, and where to report
/// users that lost ownership.
#[derive(Clone, Debug)]
pub struct WriterFence {
    pub node: Arc<str>,
    pub lease: crate::lease::Lease,
    pub lost: mpsc::UnboundedSender<crate::store::UserId>,
}

/// The writer's metrics, kept as it commits (registered in `services::metrics`).
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    pub batches: Counter,
    pub messages: Counter,
    /// How long the last commit took, in seconds.
    pub last_batch: Gauge<f64, AtomicU64>,
    /// How long each commit took, in seconds.
    pub batch_seconds: Histogram,
    pub errors: Counter,
    pub dropped: Counter,
    pub fenced: Counter,
    /// Lines in the outage buffer (gap markers included).
    pub held_lines: Gauge,
    /// Bytes in the outage buffer's spill file.
    pub spill_bytes: Gauge,
    /// Lines the outage buffer turned into gap markers because it was full.
    pub gap_lines: Counter,
}

impl Default for WriterMetrics {
    fn default() -> WriterMetrics {
        WriterMetrics {
            batches: Counter::default(),
            messages: Counter::default(),
            last_batch: Gauge::default(),
            // 0.5 ms to about 16 s.
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            errors: Counter::default(),
            dropped: Counter::default(),
            fenced: Counter::default(),
            held_lines: Gauge::default(),
            spill_bytes: Gauge::default(),
            gap_lines: Counter::default(),
        }
    }
}

// Not boxed: `Write` is the hot path, and the queue allocates slots lazily.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    Write(NewMessage),
    Flush(oneshot::Sender<Result<(), WriterClosed>>),
}

/// Handle to the node's message writer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Cmd>,
    /// Wakes the task while it gathers a batch: a flush, or the queue holding
    /// `wake_at` messages (see [`Task::gather`]).
    wake: Arc<Notify>,
    wake_at: usize,
    counters: Arc<WriterMetrics>,
    settle: Arc<std::sync::OnceLock<Arc<dyn Settle>>>,
}

impl Writer {
    /// Starts the writer task. It stops when `shutdown` is cancelled (after committing
    /// what was queued) or when every `Writer` handle is dropped.
    pub fn spawn(
        store: Store,
        cfg: WriterConfig,
        shutdown: CancellationToken,
    ) -> (Writer, JoinHandle<()>) {
        Writer::spawn_inner(store, cfg, shutdown, None)
    }

    /// Starts a fenced writer (see the module docs).
    pub fn spawn_fenced(
        store: Store,
        cfg: WriterConfig,
        shutdown: CancellationToken,
        fence: WriterFence,
    ) -> (Writer, JoinHandle<()>) {
        Writer::spawn_inner(store, cfg, shutdown, Some(fence))
    }

    fn spawn_inner(
        store: Store,
        cfg: WriterConfig,
        shutdown: CancellationToken,
        fence: Option<WriterFence>,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let wake = Arc::new(Notify::new());
        // Half a batch: the task takes what is queued each time it wakes, so a full
        // batch is gathered within two wake-ups, never waiting for the deadline.
        let wake_at = (cfg.max_batch.min(cfg.queue) / 2).max(1);
        let counters = Arc::new(WriterMetrics::default());
        let settle = Arc::new(std::sync::OnceLock::new());
        let task = Task {
            settle: settle.clone(),
            held: Held::new(cfg.outage.clone()),
            store,
            cfg,
            shutdown,
            rx,
            wake: wake.clone(),
            counters: counters.clone(),
            pending: Vec::new(),
            spare: Vec::new(),
            waiters: Vec::new(),
            held_waiters: Vec::new(),
            backoff: MIN_BACKOFF,
            retry_at: tokio::time::Instant::now(),
            fence,
        };
        let handle = tokio::spawn(task.run());
        (
            Writer {
                tx,
                wake,
                wake_at,
                counters,
                settle,
            },
            handle,
        )
    }

    /// Has batches wait for the shared events `settle` says may still gain members
    /// (see the module docs). Set once, by the node that owns the streams; later calls
    /// change nothing.
    pub fn settle_with(&self, settle: Arc<dyn Settle>) {
        let _ = self.settle.set(settle);
    }

    /// Queues a message; waits while the queue is full.
    ///
    /// # Errors
    /// [`WriterClosed`] if the writer has stopped.
    pub async fn write(&self, m: NewMessage) -> Result<(), WriterClosed> {
        self.tx
            .send(Cmd::Write(m))
            .await
            .map_err(|_| WriterClosed)?;
        self.wake_if_full();
        Ok(())
    }

    /// Wakes a gathering task once half a batch is queued.
    fn wake_if_full(&self) {
        if self.queued() >= self.wake_at {
            self.wake.notify_one();
        }
    }

    /// Queues messages together: room for all of them is taken at once (waiting
    /// while the queue is full), so no flush requested meanwhile can slip between
    /// them.
    ///
    /// # Errors
    /// [`WriterClosed`] if the writer has stopped.
    pub async fn write_all(&self, ms: Vec<NewMessage>) -> Result<(), WriterClosed> {
        if ms.len() > self.tx.max_capacity() {
            for m in ms {
                self.write(m).await?;
            }
            return Ok(());
        }
        let permits = self
            .tx
            .reserve_many(ms.len())
            .await
            .map_err(|_| WriterClosed)?;
        for (permit, m) in permits.zip(ms) {
            permit.send(Cmd::Write(m));
        }
        self.wake_if_full();
        Ok(())
    }

    /// Resolves once everything written before it is committed.
    ///
    /// # Errors
    /// [`WriterClosed`] if the writer stopped first (shutdown with the database down).
    pub async fn flush(&self) -> Result<(), WriterClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(tx))
            .await
            .map_err(|_| WriterClosed)?;
        self.wake.notify_one();
        rx.await.map_err(|_| WriterClosed)?
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            batches: c.batches.get(),
            messages: c.messages.get(),
            last_batch: Duration::from_secs_f64(c.last_batch.get().max(0.0)),
            errors: c.errors.get(),
            dropped: c.dropped.get(),
            fenced: c.fenced.get(),
        }
    }

    /// The metrics the writer keeps, for the node's registry.
    pub fn metrics(&self) -> &WriterMetrics {
        &self.counters
    }

    /// Messages queued and not yet taken into a batch.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

struct Task {
    store: Store,
    cfg: WriterConfig,
    shutdown: CancellationToken,
    rx: mpsc::Receiver<Cmd>,
    wake: Arc<Notify>,
    counters: Arc<WriterMetrics>,
    /// The batch being gathered.
    pending: Vec<NewMessage>,
    /// An empty vector with room, for the next `pending` (the batch just committed,
    /// cleared) and for the rows a batch leaves behind: see [`Task::recycle`].
    spare: Vec<NewMessage>,
    /// Flushes answered when `pending` is committed.
    waiters: Vec<oneshot::Sender<Result<(), WriterClosed>>>,
    /// Lines the store could not take yet, oldest first: written back before anything
    /// newer.
    held: Held,
    /// Flushes answered when `held` is written back.
    held_waiters: Vec<oneshot::Sender<Result<(), WriterClosed>>>,
    /// The wait before the next attempt at `held` after a failure.
    backoff: Duration,
    /// When `held` is tried next.
    retry_at: tokio::time::Instant,
    fence: Option<WriterFence>,
    /// Which shared events are settled (none set: every batch is committed whole).
    settle: Arc<std::sync::OnceLock<Arc<dyn Settle>>>,
}

/// What one commit attempt came to.
enum Attempt {
    /// Committed, or settled for good (refused by fencing, rejected line by line).
    Done,
    /// Not now: the store failed (`Some`), or the node rides out a store outage.
    Later(Option<StoreError>),
}

/// Commit attempts after shutdown before giving up on a failing database.
const FINAL_ATTEMPTS: u32 = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Idle time after which the writer lets go of its batch vectors' room.
const ROOM_IDLE: Duration = Duration::from_secs(1);
/// Idle time after which the writer has the store release burst memory (counted
/// again after the room's release at `ROOM_IDLE`).
const RELEASE_AFTER: Duration = Duration::from_secs(5);
/// How often a writer holding lines looks whether the lease is held again.
const LEASE_POLL: Duration = Duration::from_millis(200);

/// The room (rows) a vector of the writer keeps after a batch of `len` rows
/// ([`Task::recycle`]): enough for a next batch twice as big without growing.
fn room_for(len: usize) -> usize {
    len.saturating_mul(2).max(1024)
}

/// What a row moved out of a vector leaves in its place until the vector is cut
/// ([`Task::complete_settled`]): allocates nothing.
fn vacated() -> NewMessage {
    NewMessage {
        user_id: 0,
        seq: 0,
        network_id: 0,
        buffer: Vec::new(),
        buffer_key: Vec::new(),
        time: DateTime::<Utc>::UNIX_EPOCH,
        sender: String::new(),
        command: String::new(),
        raw: Bytes::new(),
        text: String::new(),
        msgid: None,
        epoch: 0,
        stream: None,
    }
}

impl Task {
    async fn run(mut self) {
        let mut released = true;
        loop {
            // Wait for the first command of a batch; idle long enough, give back what
            // the last burst made the database layer hold. Lines held from an outage
            // are retried when due.
            let holding = !self.held.is_empty();
            let carrying = !self.pending.is_empty();
            let first = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                // A carried batch already full is tried again on the tick, not on
                // every line that arrives.
                cmd = self.rx.recv(), if !(carrying && self.pending.len() >= self.cfg.max_batch) => cmd,
                // What the last batch left for events still gaining members.
                () = tokio::time::sleep(SETTLE_TICK), if carrying => {
                    self.commit().await;
                    continue;
                }
                () = tokio::time::sleep_until(self.retry_at), if holding => {
                    self.write_back().await;
                    continue;
                }
                // The batch vectors' room (see `recycle`), sooner than the store's.
                () = tokio::time::sleep(ROOM_IDLE), if !carrying && self.has_room() => {
                    self.spare = Vec::new();
                    self.pending = Vec::new();
                    continue;
                }
                () = tokio::time::sleep(RELEASE_AFTER), if !released && !holding => {
                    released = true;
                    if let Err(e) = self.store.release_memory().await {
                        tracing::debug!(error = %e, "releasing the store's memory failed");
                    }
                    continue;
                }
            };
            released = false;
            let Some(first) = first else { break };
            let commit_now = self.take(first);
            // While lines are held (or the node rides out an outage) nothing is
            // committed anyway: take what is queued and journal it at once, so that
            // what was relayed is on disk within moments, not after `max_delay`.
            let outage =
                !self.held.is_empty() || self.fence.as_ref().is_some_and(|f| f.lease.riding_out());
            let deadline = tokio::time::Instant::now()
                + if outage {
                    Duration::ZERO
                } else {
                    self.cfg.max_delay
                };
            self.gather(commit_now, deadline).await;
            self.commit().await;
        }
        // Drain: refuse new messages, commit what is queued.
        self.rx.close();
        while let Some(cmd) = self.rx.recv().await {
            self.take(cmd);
            if self.pending.len() >= self.cfg.max_batch {
                self.commit().await;
            }
        }
        self.commit().await;
        // Then what the outage buffer holds: a few quick last attempts.
        let mut attempts = 0;
        while !self.held.is_empty() && attempts < FINAL_ATTEMPTS {
            attempts += 1;
            self.write_back().await;
            if !self.held.is_empty() {
                tokio::time::sleep(MIN_BACKOFF).await;
            }
        }
        if !self.held.is_empty() {
            // The spill file keeps them for the next start (`outage::replay`).
            let closed = self.held.close();
            if closed.kept > 0 {
                tracing::warn!(
                    messages = closed.kept,
                    file = ?self.cfg.outage.spill_path,
                    "message writer: the store is still away at shutdown; held messages kept in the spill file, written back at the next start"
                );
            }
            if closed.lost > 0 {
                self.counters.dropped.inc_by(closed.lost as u64);
                tracing::error!(
                    messages = closed.lost,
                    "message writer: the store is still away at shutdown, held messages lost (no spill file)"
                );
            }
            for w in self.held_waiters.drain(..) {
                let _ = w.send(Err(WriterClosed));
            }
            self.gauges();
        }
    }

    /// Gathers the batch until `deadline`, a flush, a full batch or shutdown.
    ///
    /// The task does not wait on the queue command by command: each message would
    /// wake it (one wake-up per line and user, and the woken writer would take the
    /// actor's worker thread from the client task it had just woken, so clients got
    /// one write per line; docs/benchmarks.md §2). It takes what is queued, then
    /// sleeps until the deadline unless the handles wake it ([`Writer::flush`], or
    /// the queue holding half a batch).
    async fn gather(&mut self, mut commit_now: bool, deadline: tokio::time::Instant) {
        loop {
            commit_now = self.take_queued(commit_now);
            if commit_now || self.pending.len() >= self.cfg.max_batch {
                return;
            }
            if self.rx.is_closed() && self.rx.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    // What queued by the deadline joins this batch.
                    self.take_queued(commit_now);
                    return;
                }
            }
        }
    }

    /// Takes what is queued into the batch, up to a full one or a flush; returns
    /// whether someone now waits for the batch (`commit_now` stays true).
    fn take_queued(&mut self, commit_now: bool) -> bool {
        self.take_queued_up_to(commit_now, self.cfg.max_batch)
    }

    /// [`Task::take_queued`], up to `cap` rows in `pending`.
    fn take_queued_up_to(&mut self, mut commit_now: bool, cap: usize) -> bool {
        while !commit_now && self.pending.len() < cap {
            match self.rx.try_recv() {
                Ok(cmd) => commit_now = self.take(cmd),
                Err(_) => break,
            }
        }
        commit_now
    }

    /// Adds a command to the batch; true when someone is waiting for it.
    fn take(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Write(m) => {
                self.pending.push(m);
                false
            }
            Cmd::Flush(w) => {
                self.waiters.push(w);
                true
            }
        }
    }

    /// Commits `pending` and answers the waiting flushes; when the store cannot take
    /// it now, the batch joins the outage buffer (behind what it already holds) and
    /// the flushes wait for it to be written back.
    async fn commit(&mut self) {
        // The room kept follows the batches: twice this one (see `recycle`).
        let room = room_for(self.pending.len());
        let mut rest = std::mem::take(&mut self.spare);
        rest.shrink_to(room);
        self.unsettled_tail(&mut rest);
        let batch = std::mem::replace(&mut self.pending, rest);
        if self.held.is_empty() {
            let done = if batch.is_empty() {
                self.recycle(batch);
                true
            } else {
                match self.attempt(&batch).await {
                    Attempt::Done => {
                        self.recycle(batch);
                        true
                    }
                    Attempt::Later(e) => {
                        self.hold(batch, e.as_ref());
                        false
                    }
                }
            };
            if done {
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                return;
            }
        } else {
            self.hold(batch, None);
        }
        self.held_waiters.append(&mut self.waiters);
        if tokio::time::Instant::now() >= self.retry_at {
            self.write_back().await;
        }
    }

    /// Keeps a committed batch's vector, emptied, for the next `pending`: a batch is
    /// megabytes (16,384 rows, and under load often several times that: what queued
    /// while the last one committed, up to [`Task::pending_cap`]), and a fresh vector
    /// each time grew into pages the allocator had just given back (it purges after
    /// 1 s, `main.rs`), so the writer spent a tenth of the node's CPU in page faults
    /// and copies (docs/benchmarks.md §2). The room kept follows the load: at most
    /// twice the batch just committed ([`room_for`]), so it shrinks with the batches
    /// once a burst is over, and all of it is let go after a second without
    /// messages (`ROOM_IDLE`): kept longer, it showed in an idle node's memory.
    fn recycle(&mut self, mut batch: Vec<NewMessage>) {
        let room = room_for(batch.len());
        batch.clear();
        batch.shrink_to(room);
        if batch.capacity() > self.spare.capacity() {
            self.spare = batch;
        }
    }

    /// Whether the batch vectors hold room (emptied, see [`Task::recycle`]).
    fn has_room(&self) -> bool {
        self.spare.capacity() > 0 || self.pending.capacity() > 0
    }

    /// Cuts `pending` before the first row of a shared event that may still gain
    /// members, and moves the rows from there on into `tail` (empty; kept for the
    /// next batch, in order). Nothing is cut when someone waits for the batch (a
    /// flush), lines are held from an outage, or the writer is shutting down.
    ///
    /// The streams are asked first, and only then is what queued meanwhile taken
    /// (up to [`Task::pending_cap`]): an actor releases its confirmation of a line
    /// only once the line's row is queued (`user::Handing`), so every row of an event
    /// the streams call settled is then in `pending`. Rows of a stream not asked
    /// about wait for the next batch. A full batch is cut too, unless its first row
    /// is unsettled and `pending` is at its cap: then everything is committed, so
    /// actors waiting on a full queue (whose rows may hold events back) move on.
    fn unsettled_tail(&mut self, tail: &mut Vec<NewMessage>) {
        debug_assert!(tail.is_empty());
        let Some(settle) = self.settle.get().cloned() else {
            return;
        };
        if !self.waiters.is_empty() || !self.held.is_empty() || self.shutdown.is_cancelled() {
            return;
        }
        // One answer per stream per batch (rows of one stream share its key).
        let mut bounds: Vec<(Arc<StreamKey>, Seq)> = Vec::new();
        let bound = |bounds: &[(Arc<StreamKey>, Seq)], key: &StreamKey| {
            bounds
                .iter()
                .find(|(k, _)| std::ptr::eq(&**k, key) || **k == *key)
                .map(|(_, b)| *b)
        };
        for m in &self.pending {
            let Some(key) = m.stream.as_ref() else {
                continue;
            };
            if bound(&bounds, key).is_none() {
                bounds.push((key.clone(), settle.settled_below(key)));
            }
        }
        let cap = self.pending_cap();
        self.take_queued_up_to(false, cap);
        if !self.waiters.is_empty() {
            return;
        }
        let cut = self.pending.iter().position(|m| {
            let Some(key) = m.stream.as_deref() else {
                return false;
            };
            bound(&bounds, key).map_or(true, |b| m.seq >= b)
        });
        match cut {
            Some(0) if self.pending.len() >= cap => {}
            Some(i) => {
                tail.extend(self.pending.drain(i..));
                self.complete_settled(tail, |key, seq| {
                    bound(&bounds, key).is_some_and(|b| seq < b)
                });
            }
            None => {}
        }
    }

    /// The cut is by position, so a settled line whose rows came on both sides of
    /// it would be committed with the rows before it and widened by the next batch
    /// with those after it (a straggler of each such line: 1–6 late members a line
    /// at 1,000 users). Moves those later rows into the batch, except a row whose
    /// user has an earlier row left behind: a user's committed rows stay a prefix of
    /// what the user's actor queued, so no reader paging by id skips one. Leaves in
    /// `tail` what is left behind, in order.
    fn complete_settled(
        &mut self,
        tail: &mut Vec<NewMessage>,
        settled: impl Fn(&StreamKey, Seq) -> bool,
    ) {
        use std::collections::{HashMap, HashSet};
        // The settled events with a row behind the cut, then those the batch has.
        let mut wanted: HashMap<Seq, Arc<StreamKey>> = HashMap::new();
        for m in tail.iter() {
            if let Some(key) = m.stream.as_ref().filter(|k| settled(k, m.seq)) {
                wanted.insert(m.seq, key.clone());
            }
        }
        if wanted.is_empty() {
            return;
        }
        let in_batch: HashSet<Seq> = self
            .pending
            .iter()
            .filter(|m| m.stream.is_some() && m.stream.as_ref() == wanted.get(&m.seq))
            .map(|m| m.seq)
            .collect();
        wanted.retain(|seq, _| in_batch.contains(seq));
        if wanted.is_empty() {
            return;
        }
        // Which rows complete, then a stable partition in place: the rows that
        // complete join the batch in order, the others close up in order.
        let mut behind: HashSet<crate::store::UserId> = HashSet::new();
        let completes: Vec<bool> = tail
            .iter()
            .map(|m| {
                let completes = m.stream.is_some()
                    && m.stream.as_ref() == wanted.get(&m.seq)
                    && !behind.contains(&m.user_id);
                if !completes {
                    behind.insert(m.user_id);
                }
                completes
            })
            .collect();
        self.pending
            .reserve(completes.iter().filter(|&&c| c).count());
        let mut kept = 0;
        for (i, &c) in completes.iter().enumerate() {
            if c {
                // Swapped out for the row a later step moves into place (or cut).
                let m = std::mem::replace(&mut tail[i], vacated());
                self.pending.push(m);
            } else {
                tail.swap(kept, i);
                kept += 1;
            }
        }
        tail.truncate(kept);
    }

    /// Most rows `pending` holds while the writer waits for shared events to settle:
    /// a full batch and [`WriterConfig::hold`] more.
    fn pending_cap(&self) -> usize {
        self.cfg.max_batch.saturating_add(self.cfg.hold)
    }

    /// Moves a batch the store could not take into the outage buffer.
    fn hold(&mut self, batch: Vec<NewMessage>, cause: Option<&StoreError>) {
        if batch.is_empty() {
            return;
        }
        if self.held.is_empty() {
            match cause {
                Some(e) => {
                    tracing::warn!(error = %e, messages = batch.len(), "message writer: commit failed; holding messages until the store answers")
                }
                None => tracing::warn!(
                    messages = batch.len(),
                    "message writer: the store is away; holding messages"
                ),
            }
            self.retry_at = tokio::time::Instant::now() + self.backoff;
        }
        let gapped = self.held.push(batch);
        if gapped > 0 {
            self.counters.gap_lines.inc_by(gapped);
            tracing::warn!(
                lines = gapped,
                "message writer: outage buffer full, the oldest lines became gap markers"
            );
        }
        self.gauges();
    }

    fn gauges(&self) {
        let c = &self.counters;
        c.held_lines
            .set(i64::try_from(self.held.len()).unwrap_or(i64::MAX));
        c.spill_bytes
            .set(i64::try_from(self.held.spill_bytes()).unwrap_or(i64::MAX));
    }

    /// Writes the outage buffer back, front first, until it is empty or the store
    /// fails again (then it is retried after a backoff). Answers the flushes that
    /// waited for it once it is empty.
    async fn write_back(&mut self) {
        if let Some(f) = &self.fence {
            if !f.lease.is_valid() && !f.lease.riding_out() {
                // The lease is lost: these lines belong to sessions the node dropped.
                let n = self.held.clear();
                self.counters.fenced.inc_by(n as u64);
                tracing::warn!(
                    messages = n,
                    "message writer: lease lost, held messages not written"
                );
                self.finish_write_back();
                return;
            }
            if !f.lease.is_valid() {
                // Riding out: nothing is tried until the heartbeat renews the lease.
                self.retry_at = tokio::time::Instant::now() + LEASE_POLL;
                return;
            }
        }
        let mut written = 0usize;
        while !self.held.is_empty() {
            let front = match self.held.front(self.cfg.max_batch.max(1)) {
                Ok(f) => f,
                Err(e) => {
                    // Unreadable spill file: what it held is gone; say so, go on.
                    let n = self.held.clear();
                    self.counters.dropped.inc_by(n as u64);
                    tracing::error!(error = %e, messages = n, "message writer: the outage spill file cannot be read back, held messages lost");
                    break;
                }
            };
            match self.attempt(&front.messages).await {
                Attempt::Done => {
                    written += front.messages.len();
                    self.held.consume(front);
                    self.gauges();
                }
                Attempt::Later(e) => {
                    if let Some(e) = e {
                        tracing::debug!(error = %e, held = self.held.len(), "message writer: writing held messages failed, retrying");
                    }
                    self.retry_at = tokio::time::Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return;
                }
            }
        }
        if written > 0 {
            tracing::info!(
                messages = written,
                "message writer: the store answers again, held messages written back"
            );
        }
        self.finish_write_back();
    }

    fn finish_write_back(&mut self) {
        self.backoff = MIN_BACKOFF;
        self.gauges();
        if self.held.is_empty() {
            for w in self.held_waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// One attempt at committing a batch.
    async fn attempt(&self, batch: &[NewMessage]) -> Attempt {
        let started = Instant::now();
        let result = match &self.fence {
            None => self.store.insert_messages(batch).await,
            Some(f) => {
                if !f.lease.is_valid() {
                    if f.lease.riding_out() {
                        return Attempt::Later(None);
                    }
                    // No lease, no writes: these messages belong to sessions the
                    // node is dropping; the new owner has its own copy upstream.
                    self.counters.fenced.inc_by(batch.len() as u64);
                    tracing::warn!(
                        messages = batch.len(),
                        "message writer: lease not held, batch not written"
                    );
                    return Attempt::Done;
                }
                match self.store.insert_messages_fenced(&f.node, batch).await {
                    Ok(lost) => {
                        if !lost.is_empty() {
                            let n = batch.iter().filter(|m| lost.contains(&m.user_id)).count();
                            self.counters.fenced.inc_by(n as u64);
                            tracing::warn!(users = ?lost, messages = n, "message writer: stale ownership epoch, messages refused");
                            for u in lost {
                                let _ = f.lost.send(u);
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => {
                self.record(batch.len(), started.elapsed());
                Attempt::Done
            }
            Err(e) if e.is_permanent() => {
                self.counters.errors.inc();
                self.commit_one_by_one(batch, &e).await;
                Attempt::Done
            }
            Err(e) => {
                self.counters.errors.inc();
                Attempt::Later(Some(e))
            }
        }
    }

    /// The database rejected the batch: store what it accepts, drop (and log) the rest.
    async fn commit_one_by_one(&self, batch: &[NewMessage], cause: &StoreError) {
        tracing::warn!(error = %cause, messages = batch.len(), "message writer: batch rejected, committing one by one");
        for m in batch {
            let started = Instant::now();
            let mut backoff = MIN_BACKOFF;
            loop {
                let one = std::slice::from_ref(m);
                let result = match &self.fence {
                    None => self.store.insert_messages(one).await,
                    Some(f) if !f.lease.is_valid() && !f.lease.riding_out() => {
                        self.counters.fenced.inc();
                        break;
                    }
                    // Riding out a store outage: wait for the lease like any retry.
                    Some(f) if !f.lease.is_valid() => Err(StoreError::Unavailable),
                    Some(f) => self
                        .store
                        .insert_messages_fenced(&f.node, one)
                        .await
                        .map(|lost| {
                            if !lost.is_empty() {
                                self.counters.fenced.inc();
                            }
                        }),
                };
                match result {
                    Ok(()) => {
                        self.record(1, started.elapsed());
                        break;
                    }
                    Err(e) if e.is_permanent() || self.shutdown.is_cancelled() => {
                        self.counters.dropped.inc();
                        tracing::error!(
                            error = %e,
                            user = m.user_id,
                            network = m.network_id,
                            seq = m.seq,
                            "message writer: message dropped"
                        );
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    fn record(&self, messages: usize, took: Duration) {
        let c = &self.counters;
        c.batches.inc();
        c.messages.inc_by(messages as u64);
        c.last_batch.set(took.as_secs_f64());
        c.batch_seconds.observe(took.as_secs_f64());
    }
}
