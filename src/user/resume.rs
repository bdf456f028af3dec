//! Resuming a client: the one protocol by which an IRC client
//! (`downstream::replay`) and a websocket (`http::ws::replay`) catch up on what they
//! missed and go live, with no gap and no duplicate. An IRC client's replay of a
//! channel attached again (`downstream::conn`, `ChannelChange::since..until`) pages
//! the same way.
//!
//! Attaching ([`super::Attach`]) answers with `last` ([`super::Attached::last_seq`]),
//! the newest message id the actor has assigned; every line after it reaches the
//! client through its attach channel. From there:
//!
//! 1. **flush** the store's writer ([`Backlog::flushed`]): every message up to `last`
//!    is committed, so the store holds all of `(position, last]`;
//! 2. **replay** the messages with id in `(position, last]` ([`Window::After`]; or,
//!    for a client that has no position, the newest `n` up to `last`,
//!    [`Window::Newest`]) page by page, oldest first ([`Pages`], [`Pager`]), paging on
//!    the last id of each page (ids are not contiguous: a user's ids are shared by its
//!    networks and buffers);
//! 3. **hold** the live lines that arrive meanwhile ([`hold`], [`Held`]: bounded, a
//!    client that lets too many pile up is too slow), then pass them and every later
//!    line through, in order;
//! 4. **drop duplicates** ([`Sent`]): once the replay is done the client counts as
//!    having everything up to `last`; a line whose id is not above the newest id sent
//!    is one it has (a websocket attaches to its networks one after the other, so a
//!    network's live lines may carry ids the replay already sent).
//!
//! **Invariant — resume: no gap, no duplicate.** Every stored message with id above
//! the client's position reaches it exactly once, in id order: ids up to `last` from
//! the store, later ones live. This module is the only place that says how.
//!
//! What stays with each kind of client: what it sends (IRC lines adapted to its caps,
//! JSON events), which lines it leaves out (detached channels), where its position
//! comes from (a saved per-client position, the websocket's `last_id`) and how it
//! ends. No I/O happens here beyond the store reads and the writer's flush.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;

use futures::{Stream, StreamExt};

use crate::store::{HistoryQuery, Seq, Store, StoreError, StoredMessage, Writer, WriterClosed};

/// Store page size.
pub const PAGE: i64 = 1000;
/// Live lines held back during a replay before the client counts as too slow.
pub const MAX_HELD: usize = 100_000;

/// Which stored messages a client missed, up to `last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Every message with id in `(after, last]`.
    After(Seq),
    /// The newest `n` messages with id up to `last` (a client that never connected).
    Newest(i64),
}

/// The pages of a window, as queries: no I/O, so the paging rule is tested alone.
#[derive(Clone, Debug)]
pub struct Pages {
    window: Window,
    last: Seq,
    page: i64,
    done: bool,
}

impl Pages {
    pub fn new(window: Window, last: Seq) -> Pages {
        Pages::with_page(window, last, PAGE)
    }

    /// As [`Pages::new`] with `page` messages a page.
    pub fn with_page(window: Window, last: Seq, page: i64) -> Pages {
        let done = match window {
            Window::After(after) => after >= last,
            Window::Newest(n) => n <= 0,
        };
        Pages {
            window,
            last,
            page: page.max(1),
            done,
        }
    }

    /// Whether every page has been read.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The next page's query on `base` (its user, network and buffer), or `None`
    /// once the window is read.
    pub fn query(&self, base: &HistoryQuery) -> Option<HistoryQuery> {
        if self.done {
            return None;
        }
        let (after, limit, newest_first) = match self.window {
            Window::After(after) => (Some(after), self.page, false),
            Window::Newest(n) => (None, n, true),
        };
        Some(HistoryQuery {
            after,
            before: Some(self.last + 1),
            from: None,
            to: None,
            limit,
            newest_first,
            ..base.clone()
        })
    }

    /// Takes the rows the last [`Pages::query`] returned (`id` gives a row's id) and
    /// returns them oldest first; the next query starts after the last of them.
    pub fn take<M>(&mut self, mut rows: Vec<M>, id: impl Fn(&M) -> Seq) -> Vec<M> {
        match self.window {
            Window::Newest(_) => {
                rows.reverse();
                self.done = true;
            }
            Window::After(_) => match rows.last().map(&id) {
                // A full page may have more behind it; a short one is the end.
                Some(last) if rows.len() as i64 == self.page && last < self.last => {
                    self.window = Window::After(last);
                }
                _ => self.done = true,
            },
        }
        rows
    }
}

/// Why the backlog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error(transparent)]
    Writer(#[from] WriterClosed),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store once the writer has been flushed (step 1): only then can it be paged.
pub struct Backlog {
    store: Store,
    base: HistoryQuery,
}

impl Backlog {
    /// Flushes the writer: every message assigned an id so far is committed. `base`
    /// says whose messages (user, and network or buffer when only those are wanted).
    pub async fn flushed(
        store: &Store,
        writer: &Writer,
        base: HistoryQuery,
    ) -> Result<Backlog, BacklogError> {
        writer.flush().await?;
        Ok(Backlog {
            store: store.clone(),
            base,
        })
    }

    /// The store, for what a client reads beside the backlog (its saved position).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Pages through `window`, up to `last` (step 2).
    pub fn pages(&self, window: Window, last: Seq) -> Pager<'_> {
        Pager {
            backlog: self,
            pages: Pages::new(window, last),
        }
    }
}

/// Reads a window page by page.
pub struct Pager<'a> {
    backlog: &'a Backlog,
    pages: Pages,
}

impl Pager<'_> {
    /// The next page, oldest first; `None` once the window is read.
    pub async fn next(&mut self) -> Result<Option<Vec<StoredMessage>>, StoreError> {
        let Some(q) = self.pages.query(&self.backlog.base) else {
            return Ok(None);
        };
        let rows = self.backlog.store.history(&q).await?;
        Ok(Some(self.pages.take(rows, |m| m.seq)))
    }
}

/// Live lines held back while the backlog is replayed (step 3), bounded.
#[derive(Debug)]
pub struct Held<T> {
    lines: VecDeque<T>,
    max: usize,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held::new()
    }
}

impl<T> Held<T> {
    pub fn new() -> Held<T> {
        Held::with_max(MAX_HELD)
    }

    /// As [`Held::new`], holding at most `max` lines.
    pub fn with_max(max: usize) -> Held<T> {
        Held {
            lines: VecDeque::new(),
            max,
        }
    }

    /// Holds a line; `false` when that is more than the client may have waiting.
    fn hold(&mut self, line: T) -> bool {
        self.lines.push_back(line);
        self.lines.len() <= self.max
    }

    /// The oldest line held, to be passed through now.
    pub fn pop_front(&mut self) -> Option<T> {
        self.lines.pop_front()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

impl<T> IntoIterator for Held<T> {
    type Item = T;
    type IntoIter = std::collections::vec_deque::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.lines.into_iter()
    }
}

/// Why [`hold`] stopped before the backlog was sent.
#[derive(Debug)]
pub enum Interrupted<E, L> {
    /// Sending the backlog failed.
    Backlog(E),
    /// More live lines arrived than [`Held`] takes: the client is too slow.
    TooSlow,
    /// The live source said the client must end (e.g. the actor dropped it).
    Live(L),
}

/// Runs `backlog` (the replay, steps 1 and 2) while holding in `held` the lines
/// `live` yields meanwhile. A live source that ends just stops being read (the
/// client notices afterwards, from the same source); an `Err` from it ends the
/// replay at once.
///
/// # Errors
/// See [`Interrupted`].
pub async fn hold<R, E, T, L>(
    backlog: impl Future<Output = Result<R, E>>,
    live: impl Stream<Item = Result<T, L>>,
    held: &mut Held<T>,
) -> Result<R, Interrupted<E, L>> {
    let mut backlog = pin!(backlog);
    let mut live = pin!(live);
    let mut open = true;
    loop {
        tokio::select! {
            r = &mut backlog => return r.map_err(Interrupted::Backlog),
            l = live.next(), if open => match l {
                Some(Ok(line)) => {
                    if !held.hold(line) {
                        return Err(Interrupted::TooSlow);
                    }
                }
                Some(Err(e)) => return Err(Interrupted::Live(e)),
                None => open = false,
            },
        }
    }
}

/// The newest message id a client has been given (step 4): ids at or below it are
/// duplicates. `None` before anything was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent(Option<Seq>);

impl Sent {
    /// A client that has everything up to `id`.
    pub fn at(id: Option<Seq>) -> Sent {
        Sent(id)
    }

    pub fn last(self) -> Option<Seq> {
        self.0
    }

    /// Whether `id` is one the client does not have yet.
    pub fn fresh(self, id: Seq) -> bool {
        self.0.map_or(true, |last| id > last)
    }

    /// Counts everything up to `id` as given (never goes back).
    pub fn mark(&mut self, id: Seq) {
        self.0 = Some(self.0.map_or(id, |last| last.max(id)));
    }

    /// [`Sent::fresh`], and if so [`Sent::mark`]: for a line that is sent at once.
    pub fn admit(&mut self, id: Seq) -> bool {
        let fresh = self.fresh(id);
        if fresh {
            self.mark(id);
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use tokio::sync::{mpsc, oneshot};

    /// A store double: `rows` (sorted ids) answering `q` as `Store::history` does.
    fn answer(rows: &[Seq], q: &HistoryQuery) -> Vec<Seq> {
        let mut hit: Vec<Seq> = rows
            .iter()
            .copied()
            .filter(|&id| q.after.map_or(true, |a| id > a) && q.before.map_or(true, |b| id < b))
            .collect();
        if q.newest_first {
            hit.reverse();
        }
        hit.truncate(usize::try_from(q.limit).unwrap_or(0));
        hit
    }

    /// Everything a window yields over `rows`, page by page, and how many queries.
    fn replay(rows: &[Seq], window: Window, last: Seq, page: i64) -> (Vec<Vec<Seq>>, usize) {
        let mut pages = Pages::with_page(window, last, page);
        let base = HistoryQuery {
            user: 7,
            network: Some(3),
            ..HistoryQuery::default()
        };
        let mut out = Vec::new();
        let mut queries = 0;
        while let Some(q) = pages.query(&base) {
            assert_eq!((q.user, q.network), (7, Some(3)), "the base's filters stay");
            assert_eq!(q.before, Some(last + 1), "never past `last`");
            queries += 1;
            assert!(queries < 100, "paging must end");
            out.push(pages.take(answer(rows, &q), |id| *id));
        }
        (out, queries)
    }

    #[test]
    fn pages_over_several_pages_oldest_first() {
        let rows: Vec<Seq> = (1..=25).collect();
        let (pages, queries) = replay(&rows, Window::After(3), 22, 5);
        let flat: Vec<Seq> = pages.concat();
        assert_eq!(
            flat,
            (4..=22).collect::<Vec<_>>(),
            "(3, 22], each once, in order"
        );
        assert_eq!(pages.len(), 4, "5 + 5 + 5 + 4");
        assert_eq!(queries, 4, "a short page ends it");
    }

    #[test]
    fn a_full_last_page_ending_at_last_needs_no_empty_query() {
        let rows: Vec<Seq> = (1..=30).collect();
        let (pages, queries) = replay(&rows, Window::After(10), 20, 5);
        assert_eq!(pages.concat(), (11..=20).collect::<Vec<_>>());
        assert_eq!(queries, 2);
    }

    #[test]
    fn ids_not_contiguous_page_on_the_last_id() {
        // Another network's ids (and a QUIT stored in several buffers) leave holes.
        let rows: Vec<Seq> = vec![2, 3, 9, 10, 11, 40, 41, 77, 78, 79, 80, 120, 121];
        let (pages, _) = replay(&rows, Window::After(3), 100, 3);
        assert_eq!(pages.concat(), vec![9, 10, 11, 40, 41, 77, 78, 79, 80]);
        assert_eq!(
            pages[1],
            vec![40, 41, 77],
            "the second page starts after 11"
        );
    }

    #[test]
    fn empty_backlog_reads_nothing() {
        // Position at or past `last`: not even a query.
        assert_eq!(replay(&[1, 2, 3], Window::After(3), 3, 5), (vec![], 0));
        assert_eq!(replay(&[1, 2, 3], Window::After(9), 3, 5), (vec![], 0));
        // A user with nothing stored yet.
        assert_eq!(replay(&[], Window::Newest(500), 0, 5), (vec![vec![]], 1));
        assert_eq!(replay(&[1, 2], Window::Newest(0), 2, 5), (vec![], 0));
        // Nothing stored in the window: one query, one empty page.
        assert_eq!(
            replay(&[1, 2, 3, 9], Window::After(3), 8, 5),
            (vec![vec![]], 1)
        );
    }

    #[test]
    fn newest_window_is_one_page_oldest_first() {
        let rows: Vec<Seq> = (1..=50).collect();
        let (pages, queries) = replay(&rows, Window::Newest(4), 30, 1000);
        assert_eq!(pages, vec![vec![27, 28, 29, 30]]);
        assert_eq!(queries, 1);
    }

    #[test]
    fn duplicate_at_the_boundary_is_dropped() {
        // The replay gave everything up to `last` = 10.
        let mut sent = Sent::at(Some(10));
        assert!(!sent.admit(9), "older");
        assert!(!sent.admit(10), "the boundary itself was replayed");
        assert!(sent.admit(11), "the first live line");
        assert!(!sent.admit(11), "the same line twice");
        assert!(sent.admit(14), "ids need not be contiguous");
        assert_eq!(sent.last(), Some(14));
        // A line the client has not been given yet is not counted until marked.
        assert!(sent.fresh(15));
        assert_eq!(sent.last(), Some(14));
        sent.mark(12);
        assert_eq!(sent.last(), Some(14), "never goes back");
        let mut none = Sent::default();
        assert!(none.fresh(0) && none.admit(1));
    }

    #[tokio::test]
    async fn live_lines_during_the_replay_are_held_in_order() {
        let (tx, mut rx) = mpsc::channel::<Seq>(16);
        let (done, wait) = oneshot::channel::<()>();
        let mut held = Held::new();
        // The backlog finishes only once the live lines have arrived.
        let backlog = async {
            wait.await.unwrap();
            Ok::<_, ()>(vec![8, 9, 10])
        };
        let live = stream::poll_fn(|cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, ()>)));
        let feeder = async {
            for id in [10, 11, 12] {
                tx.send(id).await.unwrap();
            }
            // Let `hold` read them before the backlog completes.
            while tx.capacity() < 16 {
                tokio::task::yield_now().await;
            }
            done.send(()).unwrap();
        };
        let (replayed, ()) = tokio::join!(hold(backlog, live, &mut held), feeder);
        let replayed = replayed.unwrap();
        // Then: the replay, the held lines without what it sent, the rest live.
        let mut sent = Sent::default();
        let mut client = Vec::new();
        for id in replayed {
            assert!(sent.admit(id));
            client.push(id);
        }
        tx.send(13).await.unwrap();
        drop(tx);
        let later: Vec<Seq> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        for id in held.into_iter().chain(later) {
            if sent.admit(id) {
                client.push(id);
            }
        }
        assert_eq!(client, vec![8, 9, 10, 11, 12, 13], "no gap, no duplicate");
    }

    #[tokio::test]
    async fn a_live_source_that_ends_stops_being_read() {
        let mut held = Held::new();
        let live = stream::iter([Ok::<Seq, ()>(5)]);
        let backlog = async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            Ok::<_, ()>("sent")
        };
        let r = hold(backlog, live, &mut held).await;
        assert_eq!(r.unwrap(), "sent");
        assert_eq!(held.into_iter().collect::<Vec<_>>(), vec![5]);
    }

    #[tokio::test]
    async fn too_many_held_lines_end_the_replay() {
        let mut held = Held::with_max(2);
        let live = stream::iter((1..=3).map(Ok::<Seq, ()>));
        let r = hold(std::future::pending::<Result<(), ()>>(), live, &mut held).await;
        assert!(matches!(r, Err(Interrupted::TooSlow)));
    }

    #[tokio::test]
    async fn a_live_error_ends_the_replay() {
        let mut held = Held::new();
        let live = stream::iter([Ok(1), Err("dropped"), Ok(2)]);
        let r = hold(std::future::pending::<Result<(), ()>>(), live, &mut held).await;
        assert!(matches!(r, Err(Interrupted::Live("dropped"))));
        assert_eq!(held.len(), 1);
    }

    #[tokio::test]
    async fn a_backlog_error_is_passed_on() {
        let mut held = Held::<Seq>::new();
        let r = hold(
            async { Err::<(), _>("store") },
            stream::pending::<Result<Seq, ()>>(),
            &mut held,
        )
        .await;
        assert!(matches!(r, Err(Interrupted::Backlog("store"))));
    }
}
