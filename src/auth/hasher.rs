//! The bounded pool that runs argon2: a semaphore of `permits` around every password
//! hash and check, and at most `queue` callers waiting for one. Argon2 as configured
//! uses about 19 MiB per run, so memory for hashing stays below `permits × 19 MiB`
//! whatever arrives; a caller beyond the queue is refused ([`Busy`]) rather than
//! parked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Memory set aside per concurrent argon2 run (it uses about 19 MiB; the rest is room
/// for everything else the node does).
const MEM_PER_PERMIT: u64 = 64 * 1024 * 1024;

/// Permits for a node with `cores` cores and `mem_available` bytes of available
/// memory (when known): `min(cores × 2, mem_available / 64 MiB)`, at least 1.
pub fn permits_for(cores: usize, mem_available: Option<u64>) -> usize {
    let by_cores = cores.max(1) * 2;
    let by_mem = mem_available.map_or(usize::MAX, |m| {
        usize::try_from(m / MEM_PER_PERMIT).unwrap_or(usize::MAX)
    });
    by_cores.min(by_mem).max(1)
}

/// The pool is full and so is its queue: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks at once; try again later")]
pub struct Busy;

/// The bounded pool of password hashing.
pub struct Hasher {
    sem: Arc<Semaphore>,
    permits: usize,
    queue: usize,
    waiting: AtomicUsize,
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    refused: AtomicU64,
}

/// What `/metrics` shows of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasherStats {
    pub permits: usize,
    /// Hashes running now.
    pub active: usize,
    /// The most that ever ran at once (never above `permits`).
    pub peak: usize,
    /// Callers waiting for a permit now.
    pub waiting: usize,
    /// Callers refused because the queue was full.
    pub refused: u64,
}

/// Decrements the running count when a hash ends (also if it panics).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hasher {
    pub fn new(permits: usize, queue: usize) -> Hasher {
        let permits = permits.max(1);
        Hasher {
            sem: Arc::new(Semaphore::new(permits)),
            permits,
            queue,
            waiting: AtomicUsize::new(0),
            active: Arc::default(),
            peak: Arc::default(),
            refused: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> HasherStats {
        HasherStats {
            permits: self.permits,
            active: self.active.load(Ordering::SeqCst),
            peak: self.peak.load(Ordering::SeqCst),
            waiting: self.waiting.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` (an argon2 run) on the blocking pool once a permit is free.
    ///
    /// The permit travels with the blocking job, so a caller that gives up (a client
    /// that disconnects) does not free it before the hash is done.
    ///
    /// # Errors
    /// [`Busy`] when `queue` callers are already waiting.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue
            && self.sem.available_permits() == 0
        {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        }
        let permit = self.sem.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let permit = permit.map_err(|_| Busy)?;
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let running = Running(self.active.clone());
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(running);
            drop(permit);
            out
        })
        .await
        .map_err(|_| Busy)
    }

    /// Checks `password` against the PHC string `hash`.
    ///
    /// # Errors
    /// [`Busy`] when the pool's queue is full.
    pub async fn verify(&self, hash: String, password: String) -> Result<bool, Busy> {
        self.run(move || super::verify_password(&hash, &password))
            .await
    }

    /// Hashes a new password.
    ///
    /// # Errors
    /// [`Busy`] when the pool's queue is full.
    pub async fn hash(&self, password: String) -> Result<String, Busy> {
        self.run(move || super::hash_password(&password)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_from_cores_and_memory() {
        assert_eq!(permits_for(2, None), 4);
        assert_eq!(permits_for(8, Some(20 * 1024 * 1024 * 1024)), 16);
        assert_eq!(permits_for(8, Some(200 * 1024 * 1024)), 3);
        assert_eq!(permits_for(8, Some(1024)), 1, "at least one");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_permits_and_refuses_beyond_the_queue() {
        let h = Arc::new(Hasher::new(2, 3));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                h.run(|| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .await
            }));
        }
        let mut ok = 0;
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(Busy) => busy += 1,
            }
        }
        let s = h.stats();
        assert!(s.peak <= 2, "{s:?}");
        assert!(busy > 0, "a flood beyond permits + queue is refused: {s:?}");
        assert!(ok >= 5, "permits + queue get through: {ok}");
        assert_eq!(s.refused, busy);
        assert_eq!((s.active, s.waiting), (0, 0));
    }
}
