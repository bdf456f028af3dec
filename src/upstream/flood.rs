//! Outgoing flood control: a token bucket of `burst` lines refilled at
//! `rate` lines per second. Servers kill clients that send too fast ("Excess
//! Flood"), and the actor may relay a paste of many lines at once.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    burst: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket. A non-positive rate is treated as one line per second.
    pub fn new(burst: u32, rate: f64, now: Instant) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            burst,
            rate: if rate > 0.0 { rate } else { 1.0 },
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// When the next line may be sent (`now` if a token is available).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Tokens left now (carried when a connection is parked).
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// A bucket with `tokens` left (a parked connection's), at most `burst`.
    pub fn with_tokens(burst: u32, rate: f64, tokens: f64, now: Instant) -> Bucket {
        let mut b = Bucket::new(burst, rate, now);
        b.tokens = tokens.clamp(0.0, b.burst);
        b
    }

    /// Takes a token if one is available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 2.0, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        let ready = b.ready_at(t0);
        assert_eq!(ready - t0, Duration::from_millis(500));
        assert!(!b.try_take(t0 + Duration::from_millis(400)));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        // After a long pause the bucket holds at most `burst` tokens.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }
}
