//! Group commit: one writer per node, shared by all users.
//!
//! User actors hand their messages to a [`Writer`]; its task gathers them for up to
//! `max_delay` or `max_batch` messages and commits each batch in one transaction, so the
//! database sees a few large transactions instead of one per line.
//!
//! Messages are never dropped silently. When the database fails, the batch is kept and
//! retried with backoff while the queue (bounded) fills up and pushes back on the
//! senders. Only a batch the database *rejects* (a constraint violation, which retrying
//! cannot fix) is split, and the messages it rejects one by one are logged and dropped.
//! A node's writer is *fenced* ([`Writer::spawn_fenced`]): it commits nothing while the
//! node's lease is not held, and the store drops, in the same transaction, messages
//! whose ownership epoch is stale; the users concerned are reported on a channel so the
//! node stops their actors.
//!
//! On shutdown the task drains what is queued, commits it, and exits; if the database
//! is still failing after a few last attempts, it logs how many messages it lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{NewMessage, Store, StoreError};

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
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 16384,
            max_delay: Duration::from_millis(250),
            queue: 65536,
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

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    messages: AtomicU64,
    last_batch_us: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    fenced: AtomicU64,
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
    counters: Arc<Counters>,
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
        let counters = Arc::new(Counters::default());
        let task = Task {
            store,
            cfg,
            shutdown,
            rx,
            counters: counters.clone(),
            pending: Vec::new(),
            waiters: Vec::new(),
            fence,
        };
        let handle = tokio::spawn(task.run());
        (Writer { tx, counters }, handle)
    }

    /// Queues a message; waits while the queue is full.
    ///
    /// # Errors
    /// [`WriterClosed`] if the writer has stopped.
    pub async fn write(&self, m: NewMessage) -> Result<(), WriterClosed> {
        self.tx.send(Cmd::Write(m)).await.map_err(|_| WriterClosed)
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
        rx.await.map_err(|_| WriterClosed)?
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            batches: c.batches.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            last_batch: Duration::from_micros(c.last_batch_us.load(Ordering::Relaxed)),
            errors: c.errors.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            fenced: c.fenced.load(Ordering::Relaxed),
        }
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
    counters: Arc<Counters>,
    /// The batch being gathered.
    pending: Vec<NewMessage>,
    /// Flushes answered when `pending` is committed.
    waiters: Vec<oneshot::Sender<Result<(), WriterClosed>>>,
    fence: Option<WriterFence>,
}

/// Commit attempts after shutdown before giving up on a failing database.
const FINAL_ATTEMPTS: u32 = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Idle time after which the writer has the store release burst memory.
const RELEASE_AFTER: Duration = Duration::from_secs(5);

impl Task {
    async fn run(mut self) {
        let mut released = true;
        loop {
            // Wait for the first command of a batch; idle long enough, give back what
            // the last burst made the database layer hold.
            let first = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                cmd = self.rx.recv() => cmd,
                () = tokio::time::sleep(RELEASE_AFTER), if !released => {
                    released = true;
                    if let Err(e) = self.store.release_memory().await {
                        tracing::debug!(error = %e, "releasing the store's memory failed");
                    }
                    continue;
                }
            };
            released = false;
            let Some(first) = first else { break };
            let mut commit_now = self.take(first);
            let deadline = tokio::time::Instant::now() + self.cfg.max_delay;
            while !commit_now && self.pending.len() < self.cfg.max_batch {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => break,
                    cmd = self.rx.recv() => match cmd {
                        Some(cmd) => commit_now = self.take(cmd),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
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

    /// Commits `pending`, retrying until it is stored (or given up on at shutdown), and
    /// answers the waiting flushes.
    async fn commit(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        let ok = batch.is_empty() || self.commit_batch(&batch).await;
        for w in self.waiters.drain(..) {
            let _ = w.send(if ok { Ok(()) } else { Err(WriterClosed) });
        }
    }

    async fn commit_batch(&self, batch: &[NewMessage]) -> bool {
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u32;
        let mut final_attempts = 0u32;
        loop {
            let started = Instant::now();
            let result = match &self.fence {
                None => self.store.insert_messages(batch).await,
                Some(f) => {
                    if !f.lease.is_valid() {
                        // No lease, no writes: these messages belong to sessions the
                        // node is dropping; the new owner has its own copy upstream.
                        self.counters
                            .fenced
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        tracing::warn!(
                            messages = batch.len(),
                            "message writer: lease not held, batch not written"
                        );
                        return true;
                    }
                    match self.store.insert_messages_fenced(&f.node, batch).await {
                        Ok(lost) => {
                            if !lost.is_empty() {
                                let n = batch.iter().filter(|m| lost.contains(&m.user_id)).count();
                                self.counters.fenced.fetch_add(n as u64, Ordering::Relaxed);
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
                    if failures > 0 {
                        tracing::info!(
                            messages = batch.len(),
                            failures,
                            "message writer recovered"
                        );
                    }
                    return true;
                }
                Err(e) if e.is_permanent() => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.commit_one_by_one(batch, &e).await;
                    return true;
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, messages = batch.len(), "message writer: commit failed, retrying");
                    } else {
                        tracing::debug!(error = %e, failures, "message writer: commit failed again");
                    }
                    if self.shutdown.is_cancelled() {
                        final_attempts += 1;
                        if final_attempts >= FINAL_ATTEMPTS {
                            self.counters
                                .dropped
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                            tracing::error!(
                                error = %e,
                                messages = batch.len(),
                                "message writer: giving up at shutdown, messages lost"
                            );
                            return false;
                        }
                    }
                    if self.shutdown.is_cancelled() {
                        // Shutting down: a few quick last attempts, not a long backoff.
                        tokio::time::sleep(MIN_BACKOFF).await;
                    } else {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = self.shutdown.cancelled() => {}
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
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
                    Some(f) if !f.lease.is_valid() => {
                        self.counters.fenced.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(f) => self
                        .store
                        .insert_messages_fenced(&f.node, one)
                        .await
                        .map(|lost| {
                            if !lost.is_empty() {
                                self.counters.fenced.fetch_add(1, Ordering::Relaxed);
                            }
                        }),
                };
                match result {
                    Ok(()) => {
                        self.record(1, started.elapsed());
                        break;
                    }
                    Err(e) if e.is_permanent() || self.shutdown.is_cancelled() => {
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
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
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.messages.fetch_add(messages as u64, Ordering::Relaxed);
        c.last_batch_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }
}
