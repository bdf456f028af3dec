//! At most one push per (user, buffer) per window: the first line of a burst is
//! pushed at once and opens a window; lines arriving inside it are held — only
//! the latest is kept, with a count — and pushed together when the window ends,
//! which opens the next one. A quiet window closes without a push.
//!
//! Pure state driven by the caller's clock, so it is tested without timers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{NetworkId, UserId};

/// The buffer a notification is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferKey {
    pub user: UserId,
    pub network: NetworkId,
    /// The buffer name folded with the network's case mapping.
    pub buffer: Vec<u8>,
}

/// What became of an offered item.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Push now; it stands for `count` lines (always 1: a window was not open).
    Now(T, u32),
    /// Held for the end of the window (replacing an older held item).
    Held,
    /// Too many open windows: the item is refused.
    Full(T),
}

struct Window<T> {
    until: Instant,
    held: Option<(T, u32)>,
}

/// Windows per buffer; see the module docs.
pub struct Coalescer<T> {
    window: Duration,
    max_windows: usize,
    windows: HashMap<BufferKey, Window<T>>,
    /// Window ends, possibly stale (a key whose window was reopened has a later
    /// entry too); `due` skips entries that no longer match.
    ends: BinaryHeap<Reverse<(Instant, BufferKey)>>,
}

impl<T> Coalescer<T> {
    /// `window` zero turns coalescing off; at most `max_windows` buffers are
    /// tracked at once (each costs one held item at most).
    pub fn new(window: Duration, max_windows: usize) -> Coalescer<T> {
        Coalescer {
            window,
            max_windows,
            windows: HashMap::new(),
            ends: BinaryHeap::new(),
        }
    }

    /// Offers a line's notification at `now`. Call [`Coalescer::due`] first so
    /// windows that ended are closed.
    pub fn offer(&mut self, key: BufferKey, item: T, now: Instant) -> Offer<T> {
        if let Some(w) = self.windows.get_mut(&key) {
            if w.until > now {
                let count = w.held.take().map_or(0, |(_, n)| n);
                w.held = Some((item, count.saturating_add(1)));
                return Offer::Held;
            }
            // An ended window not yet collected: reopen it.
            w.until = now + self.window;
            w.held = None;
            self.ends.push(Reverse((w.until, key)));
            return Offer::Now(item, 1);
        }
        if self.window.is_zero() {
            return Offer::Now(item, 1);
        }
        if self.windows.len() >= self.max_windows {
            return Offer::Full(item);
        }
        let until = now + self.window;
        self.windows
            .insert(key.clone(), Window { until, held: None });
        self.ends.push(Reverse((until, key)));
        Offer::Now(item, 1)
    }

    /// The held items whose window ended by `now`, each with the number of lines
    /// it stands for. Each opens a new window; windows that held nothing close.
    pub fn due(&mut self, now: Instant) -> Vec<(T, u32)> {
        let mut out = Vec::new();
        while let Some(Reverse((until, _))) = self.ends.peek() {
            if *until > now {
                break;
            }
            let Reverse((until, key)) = self.ends.pop().expect("peeked");
            let Some(w) = self.windows.get_mut(&key) else {
                continue;
            };
            if w.until != until {
                continue;
            }
            match w.held.take() {
                Some(held) => {
                    out.push(held);
                    w.until = now + self.window;
                    self.ends.push(Reverse((w.until, key)));
                }
                None => {
                    self.windows.remove(&key);
                }
            }
        }
        out
    }

    /// When [`Coalescer::due`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ends.peek().map(|Reverse((until, _))| *until)
    }

    /// Buffers with an open window.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(buffer: &str) -> BufferKey {
        BufferKey {
            user: 1,
            network: 1,
            buffer: buffer.as_bytes().to_vec(),
        }
    }

    const W: Duration = Duration::from_secs(5);

    #[test]
    fn a_burst_is_one_push_now_and_one_with_the_latest_and_a_count() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 100);
        assert_eq!(c.offer(key("#a"), "one", t0), Offer::Now("one", 1));
        for (i, text) in ["two", "three", "four"].into_iter().enumerate() {
            assert_eq!(
                c.offer(key("#a"), text, t0 + Duration::from_secs(i as u64 + 1)),
                Offer::Held
            );
        }
        assert_eq!(c.next_deadline(), Some(t0 + W));
        assert!(c.due(t0 + W - Duration::from_millis(1)).is_empty());
        assert_eq!(c.due(t0 + W), vec![("four", 3)]);
        // The trailing push opened a new window: a line now is held, not pushed.
        assert_eq!(
            c.offer(key("#a"), "five", t0 + W + Duration::from_secs(1)),
            Offer::Held
        );
        assert_eq!(c.due(t0 + 2 * W), vec![("five", 1)]);
        // A quiet window closes.
        assert!(c.due(t0 + 3 * W).is_empty());
        assert!(c.is_empty());
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.offer(key("#a"), "six", t0 + 3 * W), Offer::Now("six", 1));
    }

    #[test]
    fn buffers_are_independent() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 100);
        assert_eq!(c.offer(key("#a"), 1, t0), Offer::Now(1, 1));
        assert_eq!(c.offer(key("#b"), 2, t0), Offer::Now(2, 1));
        let other_user = BufferKey {
            user: 2,
            ..key("#a")
        };
        assert_eq!(c.offer(other_user, 3, t0), Offer::Now(3, 1));
        assert_eq!(c.offer(key("#a"), 4, t0), Offer::Held);
        assert_eq!(c.due(t0 + W), vec![(4, 1)]);
    }

    #[test]
    fn an_ended_window_not_yet_collected_reopens() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 100);
        assert_eq!(c.offer(key("#a"), 1, t0), Offer::Now(1, 1));
        assert_eq!(c.offer(key("#a"), 2, t0 + W), Offer::Now(2, 1));
        assert!(c.due(t0 + W).is_empty(), "the stale end is skipped");
        assert_eq!(
            c.offer(key("#a"), 3, t0 + W + Duration::from_secs(1)),
            Offer::Held
        );
        assert_eq!(c.due(t0 + 2 * W), vec![(3, 1)]);
    }

    #[test]
    fn zero_window_pushes_everything_and_keeps_nothing() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO, 100);
        assert_eq!(c.offer(key("#a"), 1, t0), Offer::Now(1, 1));
        assert_eq!(c.offer(key("#a"), 2, t0), Offer::Now(2, 1));
        assert!(c.is_empty());
    }

    #[test]
    fn too_many_windows_refuses_new_buffers_only() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 2);
        assert_eq!(c.offer(key("#a"), 1, t0), Offer::Now(1, 1));
        assert_eq!(c.offer(key("#b"), 2, t0), Offer::Now(2, 1));
        assert_eq!(c.offer(key("#c"), 3, t0), Offer::Full(3));
        assert_eq!(c.offer(key("#a"), 4, t0), Offer::Held);
    }
}
