//! Jittered exponential backoff between reconnects.
//!
//! The delay doubles with each failure from `min` up to `max`; each delay is
//! drawn between half and all of that value (never below `min`) so that many
//! sessions cut off at once do not come back in lockstep. A registration that
//! lasted [`STABLE_AFTER`] resets it.

use std::time::Duration;

use rand::Rng;

/// A registered connection that lasted this long counts as healthy: the next
/// failure starts the backoff from the beginning again.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How much longer than normal to wait when the server throttles us: its ban
/// caches last minutes, and retrying early extends them.
const THROTTLED_FACTOR: u32 = 8;
/// How much longer to wait when our source address has no free slot.
const TOO_MANY_FACTOR: u32 = 4;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The un-jittered delay for the current failure count.
    fn base(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    fn jitter(&self, base: Duration) -> Duration {
        let low = (base / 2).max(self.min);
        if low >= base {
            return base;
        }
        rand::thread_rng().gen_range(low..=base)
    }

    /// The delay before the next attempt after an ordinary failure.
    pub fn next(&mut self) -> Duration {
        let d = self.jitter(self.base());
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// The delay after the server said we connect too fast.
    pub fn throttled(&mut self) -> Duration {
        self.scaled(THROTTLED_FACTOR)
    }

    /// The delay after the server said our address has no free slot.
    pub fn too_many_connections(&mut self) -> Duration {
        self.scaled(TOO_MANY_FACTOR)
    }

    fn scaled(&mut self, factor: u32) -> Duration {
        let base = self.base().saturating_mul(factor).min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.jitter(base)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_within_bounds() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for _ in 0..200 {
            let mut b = Backoff::new(min, max);
            let mut base = min;
            for _ in 0..12 {
                let d = b.next();
                assert!(d >= min && d <= max, "{d:?}");
                assert!(
                    d <= base && d >= (base / 2).max(min),
                    "{d:?} vs base {base:?}"
                );
                base = (base * 2).min(max);
            }
            // Saturated at max: between max/2 and max.
            let d = b.next();
            assert!(d >= max / 2 && d <= max);
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
            b.next();
            b.next();
            b.next();
            seen.insert(b.next());
        }
        assert!(seen.len() > 10, "delays are not jittered: {seen:?}");
    }

    #[test]
    fn reset_starts_over_and_throttled_waits_longer() {
        let min = Duration::from_millis(100);
        let mut b = Backoff::new(min, Duration::from_secs(60));
        for _ in 0..5 {
            b.next();
        }
        b.reset();
        assert_eq!(b.next(), min);
        b.reset();
        let t = b.throttled();
        assert!(t >= min * 4 && t <= min * 8, "{t:?}");
        let mut capped = Backoff::new(min, Duration::from_millis(300));
        assert!(capped.throttled() <= Duration::from_millis(300));
    }
}
