//! Client positions, saved together: one per node, shared by its IRC clients.
//!
//! An IRC client's position (the highest id it was given) is what its next attach
//! replays from. Each client used to save its own every few seconds; with a thousand
//! clients attached that was a thousand single-row writes each round, each taking one
//! of the store's connections (on SQLite, its one write lock) — they queued behind
//! each other and behind the message writer, and the node's heartbeat queued behind
//! them. Now a client only *notes* its position here ([`Positions::note`], a map
//! update), and one task writes what changed every [`FLUSH_EVERY`], in one transaction
//! per [`CHUNK`] rows on one connection ([`Store::set_client_positions_fenced`]).
//!
//! - Rows are fenced like every actor write: a position noted under an ownership the
//!   node no longer holds writes nothing.
//! - Positions only move forward in the store, so a noted position written after a
//!   later one (a close's, saved at once with [`Positions::save_now`]) changes nothing.
//! - While the node rides out a store outage nothing is written; what is noted waits
//!   (the newest position per client), and a failed write is put back to be retried.
//! - At shutdown the task writes what is noted once more. Closing clients save their
//!   own position at once, so this only matters for clients that noted after their
//!   last save.
//!
//! What a crash loses is at most the last [`FLUSH_EVERY`] plus the client's own noting
//! interval: the client is replayed those lines again at its next attach, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use super::{Fence, NetworkId, Seq, Store, StoreError};
use crate::lease::Lease;

/// How often noted positions are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Rows per transaction: bounds how long one flush holds the store's write lock
/// (SQLite) or a connection (PostgreSQL).
pub const CHUNK: usize = 512;

type Key = (NetworkId, String);

/// What the node's positions count (registered in `services::metrics`).
#[derive(Clone, Debug, Default)]
pub struct PositionMetrics {
    /// Transactions committed.
    pub batches: Counter,
    /// Rows in them (fenced ones included).
    pub rows: Counter,
    /// Failed flushes (their rows were kept for the next).
    pub errors: Counter,
    /// Clients with a position noted and not yet written.
    pub pending: Gauge,
}

/// [`PositionMetrics`] read at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PositionStats {
    /// Transactions committed.
    pub batches: u64,
    /// Rows in them (fenced ones included).
    pub rows: u64,
    /// Failed flushes (their rows were kept for the next).
    pub errors: u64,
}

/// The node's noted client positions (cheap to clone).
#[derive(Clone)]
pub struct Positions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    lease: Lease,
    pending: Mutex<HashMap<Key, (Fence, Seq)>>,
    /// One flush at a time (the task's and [`Positions::flush`]'s).
    flushing: tokio::sync::Mutex<()>,
    metrics: PositionMetrics,
}

impl Positions {
    /// Positions written by a task of their own every [`FLUSH_EVERY`], until
    /// `shutdown` (then once more). The task is spawned on `tasks`.
    pub fn spawn(
        store: Store,
        lease: Lease,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Positions {
        let p = Positions::new(store, lease);
        let run = p.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if run.inner.lease.riding_out() {
                    continue;
                }
                if let Err(e) = run.flush().await {
                    tracing::warn!(error = %e, "saving client positions failed; retrying");
                }
            }
            // With the store away, what is noted is lost with the process: those
            // clients are replayed a few seconds of lines again.
            if !run.inner.lease.riding_out() {
                if let Err(e) = run.flush().await {
                    tracing::warn!(error = %e, "saving client positions at shutdown failed");
                }
            }
        });
        p
    }

    /// Positions nobody writes until [`Positions::flush`] (tests).
    pub fn new(store: Store, lease: Lease) -> Positions {
        Positions {
            inner: Arc::new(Inner {
                store,
                lease,
                pending: Mutex::new(HashMap::new()),
                flushing: tokio::sync::Mutex::new(()),
                metrics: PositionMetrics::default(),
            }),
        }
    }

    /// Notes a client's position, to be written with the next flush. Never waits on
    /// the store.
    pub fn note(&self, fence: &Fence, network: NetworkId, client: &str, seq: Seq) {
        use std::collections::hash_map::Entry;
        let mut pending = self.inner.pending.lock().expect("positions lock");
        match pending.entry((network, client.to_owned())) {
            Entry::Occupied(mut e) => {
                let (f, s) = e.get_mut();
                if seq >= *s {
                    *s = seq;
                    f.clone_from(fence);
                }
            }
            Entry::Vacant(e) => {
                e.insert((fence.clone(), seq));
                self.inner.metrics.pending.set(pending.len() as i64);
            }
        }
    }

    /// Saves a position now (a client closing, moving or parking), and forgets what
    /// was noted for it up to there. False: fenced.
    pub async fn save_now(
        &self,
        fence: &Fence,
        network: NetworkId,
        client: &str,
        seq: Seq,
    ) -> Result<bool, StoreError> {
        {
            let mut pending = self.inner.pending.lock().expect("positions lock");
            let key = (network, client.to_owned());
            if pending.get(&key).is_some_and(|(_, s)| *s <= seq) {
                pending.remove(&key);
                self.inner.metrics.pending.set(pending.len() as i64);
            }
        }
        self.inner
            .store
            .set_client_position_fenced(fence, network, client, seq)
            .await
    }

    /// Writes what is noted; returns the rows written (fenced ones included). On a
    /// failure the rows not committed are noted again (unless newer ones were).
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let _one = self.inner.flushing.lock().await;
        let taken: Vec<(Fence, NetworkId, String, Seq)> = {
            let mut pending = self.inner.pending.lock().expect("positions lock");
            self.inner.metrics.pending.set(0);
            std::mem::take(&mut *pending)
                .into_iter()
                .map(|((network, client), (fence, seq))| (fence, network, client, seq))
                .collect()
        };
        let mut written = 0;
        for (i, chunk) in taken.chunks(CHUNK).enumerate() {
            match self.inner.store.set_client_positions_fenced(chunk).await {
                Ok(_) => {
                    written += chunk.len();
                    let m = &self.inner.metrics;
                    m.batches.inc();
                    m.rows.inc_by(chunk.len() as u64);
                }
                Err(e) => {
                    self.inner.metrics.errors.inc();
                    for (fence, network, client, seq) in &taken[i * CHUNK..] {
                        self.note(fence, *network, client, *seq);
                    }
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// How many clients have a position noted and not yet written.
    pub fn pending(&self) -> usize {
        self.inner.pending.lock().expect("positions lock").len()
    }

    pub fn stats(&self) -> PositionStats {
        let m = &self.inner.metrics;
        PositionStats {
            batches: m.batches.get(),
            rows: m.rows.get(),
            errors: m.errors.get(),
        }
    }

    pub fn metrics(&self) -> &PositionMetrics {
        &self.inner.metrics
    }
}
