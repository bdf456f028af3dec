//! The node's message id clock: every user actor of a node takes the ids of the lines
//! it stores from one [`SeqClock`], so that a line several users received can be one
//! stored event with one id (see `streams`).
//!
//! A user's ids stay strictly increasing and unique (each reservation starts above
//! both the clock and the user's newest id), but no longer dense: the ids of all the
//! node's users come from one sequence. An actor that starts, adopts or resumes a
//! user calls [`SeqClock::observe`] with the user's newest stored id first, so ids
//! handed out afterwards are above everything the user already has.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::store::Seq;

/// A node-wide, monotonic source of message ids.
#[derive(Debug, Default)]
pub struct SeqClock {
    /// The newest id handed out or observed.
    now: AtomicI64,
}

impl SeqClock {
    pub fn new() -> SeqClock {
        SeqClock::default()
    }

    /// Reserves `n` consecutive ids for a user whose newest id is `last`; returns the
    /// first. It is above both every id reserved or observed so far and `last`, so
    /// the ids `first..first + n` are new to the node and to the user (a QUIT stored
    /// in three buffers gets `first`, `first + 1`, `first + 2`).
    pub fn reserve(&self, last: Seq, n: usize) -> Seq {
        let n = n.max(1) as Seq;
        let mut now = self.now.load(Ordering::Relaxed);
        loop {
            let first = now.max(last) + 1;
            match self.now.compare_exchange_weak(
                now,
                first + n - 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return first,
                Err(seen) => now = seen,
            }
        }
    }

    /// Raises the clock to `seq` (a user's newest stored id, when an actor starts,
    /// adopts or resumes the user): later ids are above it.
    pub fn observe(&self, seq: Seq) {
        self.now.fetch_max(seq, Ordering::AcqRel);
    }

    /// The newest id handed out or observed.
    pub fn now(&self) -> Seq {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reserve_is_above_the_clock_and_the_user() {
        let clock = SeqClock::new();
        assert_eq!(clock.reserve(0, 1), 1);
        assert_eq!(clock.reserve(0, 3), 2);
        assert_eq!(clock.now(), 4);
        // A user whose newest id is ahead of the clock (stored before a restart).
        assert_eq!(clock.reserve(10, 1), 11);
        // Another user behind it gets the clock's next id.
        assert_eq!(clock.reserve(2, 2), 12);
        assert_eq!(clock.now(), 13);
    }

    #[test]
    fn observe_only_raises() {
        let clock = SeqClock::new();
        clock.observe(100);
        clock.observe(50);
        assert_eq!(clock.now(), 100);
        assert_eq!(clock.reserve(7, 1), 101);
    }

    #[test]
    fn concurrent_reservations_never_overlap() {
        let clock = Arc::new(SeqClock::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    let mut last = 0;
                    let mut got = Vec::new();
                    for i in 0..1000 {
                        let n = 1 + i % 3;
                        let first = clock.reserve(last, n);
                        assert!(first > last);
                        last = first + n as Seq - 1;
                        got.extend(first..=last);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<Seq> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an id was handed out twice");
        assert_eq!(clock.now(), n as Seq);
    }
}
