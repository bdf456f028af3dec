//! Health figures a node publishes with its heartbeat: event-loop lag and memory.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The last measured event-loop lag, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct LoopLag(Arc<AtomicI64>);

impl LoopLag {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// A ticker that measures how late it wakes up: a busy or starved runtime shows as
    /// lag. Runs until `stop`.
    pub async fn run(self, period: Duration, stop: CancellationToken) {
        loop {
            let start = tokio::time::Instant::now();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let late = start.elapsed().saturating_sub(period);
            self.0.store(
                i64::try_from(late.as_millis()).unwrap_or(i64::MAX),
                Ordering::Relaxed,
            );
        }
    }
}

/// Resident set size from `/proc/self/statm`, in bytes (0 when unavailable).
pub fn rss_bytes() -> i64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: i64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * if page > 0 { page as i64 } else { 4096 }
}

/// Memory the system can still give processes (`MemAvailable` in `/proc/meminfo`).
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_is_read() {
        assert!(super::rss_bytes() > 0);
    }
}
