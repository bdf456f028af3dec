//! The node's shared channel streams: which of the channel lines several users of a
//! node received are one line, stored once (issue 10; `docs/ARCHITECTURE.md`, "One
//! line, one event").
//!
//! A stream is what one node's connections to one server address receive in one
//! channel ([`StreamKey`]). Each stream keeps its recent *events* (a line some
//! connection received, with the id it was given) in arrival order, and a *cursor* per
//! connection: the position after the last event it confirmed or created. When a
//! connection receives a shareable line ([`Stream::line`]) the events from its cursor
//! on are scanned, and the first one that
//!
//! - has byte-identical raw bytes (tags included: other caps, other tags, no match),
//! - has an id above the user's newest id (so the user's ids keep increasing), and
//! - is younger than the window (2 s), unless the line carries a `msgid` (which
//!   matches for as long as the event is kept)
//!
//! is *confirmed*: the line takes its id and the cursor moves past it. Otherwise the
//! line is a new event at the end, with a fresh id from the node's [`SeqClock`]
//! (taken under the stream's lock, so ids increase with position). So:
//!
//! - identical lines are distinct events: a cursor only moves forward, and each line
//!   confirms at most one event;
//! - a connection never confirms an event before its cursor: a late joiner's cursor
//!   starts at the end when it joins (or at its first line), and a reconnected
//!   connection's cursor starts over the same way;
//! - a connection that did not receive a line (an op-only `NOTICE @#chan`, `+z`, a
//!   member who was reconnecting) skips its event, whose audience is smaller;
//! - when in doubt, a line is a new event: that is always correct, only not shared.
//!
//! Each stream is locked only for one line's scan; the actor keeps a [`Stream`] handle
//! per joined channel, so the node-wide map is touched only on join. A stream nobody
//! holds is dropped with its events.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::clock::SeqClock;
use crate::store::{NetworkId, Seq, StreamKey};

/// How long an event without a `msgid` may be confirmed after it was created.
pub const WINDOW: Duration = Duration::from_secs(2);
/// How long an event with a `msgid` may be confirmed (it is decisive, but kept
/// bounded: a stream holds at most this much history in memory).
pub const MSGID_WINDOW: Duration = Duration::from_secs(60);
/// At most this many recent events per stream.
pub const MAX_EVENTS: usize = 4096;

/// How long events stay matchable and how many a stream keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub window: Duration,
    pub msgid_window: Duration,
    pub max_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: WINDOW,
            msgid_window: MSGID_WINDOW,
            max_events: MAX_EVENTS,
        }
    }
}

/// The node's streams and its id clock: one per node, shared by every user actor.
#[derive(Debug)]
pub struct Streams {
    clock: Arc<SeqClock>,
    node: Arc<str>,
    limits: Limits,
    /// Streams someone holds a [`Stream`] of; dead entries are swept on open.
    open: Mutex<HashMap<Arc<StreamKey>, Weak<Cell>>>,
}

impl Streams {
    /// The streams of node `node`, whose lines take ids from `clock`.
    pub fn new(node: &str, clock: Arc<SeqClock>) -> Streams {
        Streams::with_limits(node, clock, Limits::default())
    }

    pub fn with_limits(node: &str, clock: Arc<SeqClock>, limits: Limits) -> Streams {
        Streams {
            clock,
            node: Arc::from(node),
            limits,
            open: Mutex::default(),
        }
    }

    /// The node's id clock.
    pub fn clock(&self) -> &Arc<SeqClock> {
        &self.clock
    }

    /// The stream of `channel` (casefolded by the server's CASEMAPPING) on the server
    /// dialled as `server` (`host:port`, host in lowercase).
    pub fn open(&self, server: &str, channel: Vec<u8>) -> Stream {
        let key = Arc::new(StreamKey {
            node: self.node.to_string(),
            server: server.to_owned(),
            channel,
        });
        let mut open = self.open.lock().expect("streams lock");
        let cell = match open.get(&key).and_then(Weak::upgrade) {
            Some(cell) => cell,
            None => {
                if open.len() >= 64 && open.len().is_power_of_two() {
                    open.retain(|_, w| w.strong_count() > 0);
                }
                let cell = Arc::new(Cell::default());
                open.insert(key.clone(), Arc::downgrade(&cell));
                cell
            }
        };
        let key = open.get_key_value(&key).map_or(key, |(k, _)| k.clone());
        Stream {
            key,
            cell,
            clock: self.clock.clone(),
            limits: self.limits,
        }
    }

    /// Drops what no connection may confirm any more from every open stream, and
    /// gives back the room of streams that emptied. A stream expires its events
    /// only when a line arrives, so without this a quiet channel kept its last lines
    /// (the join burst's, a few KiB per user in small channels) for as long as it
    /// stayed quiet. Returns the events dropped.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&self, now: Instant) -> usize {
        let cells: Vec<Arc<Cell>> = {
            let mut open = self.open.lock().expect("streams lock");
            open.retain(|_, w| w.strong_count() > 0);
            open.values().filter_map(Weak::upgrade).collect()
        };
        let mut dropped = 0;
        for cell in cells {
            let mut s = cell.0.lock().expect("stream lock");
            let before = s.events.len();
            s.expire(&self.limits, now);
            dropped += before - s.events.len();
            if s.events.capacity() > 2 * s.events.len() + 8 {
                let len = s.events.len();
                s.events.shrink_to(len);
            }
        }
        dropped
    }

    /// Sweeps the streams every `every` until `shutdown` ([`Streams::sweep`]).
    pub fn spawn_sweep(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                self.sweep();
            }
        });
    }

    /// How many streams are held open (for tests and metrics).
    pub fn len(&self) -> usize {
        let open = self.open.lock().expect("streams lock");
        open.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The writer cuts a batch before the events that may still gain members (see
/// `store::writer`): an event is settled once every connection of its stream moved
/// past it or it is older than the window (a connection that did not receive it —
/// an op-only line, a member reconnecting — holds it back until then).
impl crate::store::Settle for Streams {
    fn settled_below(&self, key: &StreamKey) -> Seq {
        let cell = {
            let open = self.open.lock().expect("streams lock");
            open.get(key).and_then(Weak::upgrade)
        };
        // A stream nobody holds gains no member.
        let Some(cell) = cell else {
            return Seq::MAX;
        };
        let s = cell.0.lock().expect("stream lock");
        s.settled_below(&self.limits, Instant::now())
    }
}

/// One stream, as a connection in its channel holds it.
#[derive(Clone, Debug)]
pub struct Stream {
    key: Arc<StreamKey>,
    cell: Arc<Cell>,
    clock: Arc<SeqClock>,
    limits: Limits,
}

#[derive(Debug, Default)]
struct Cell(Mutex<Events>);

/// A connection's row of a shared line on its way to the writer ([`Stream::line`]):
/// until this is dropped, the line's event is not settled.
#[derive(Debug)]
#[must_use = "the event stays unsettled until this is dropped, after the row is queued"]
pub struct Handing {
    cell: Arc<Cell>,
    conn: NetworkId,
    id: Seq,
    /// The event's bytes when the line confirmed one (see [`Handing::shared_raw`]).
    raw: Option<Bytes>,
}

impl Handing {
    /// When the line confirmed an event: the event's copy of the line's bytes
    /// (byte-identical, or the line would not have matched). A row that carries it
    /// instead of its own copy shares one allocation with every other row of the
    /// event while they wait in the writer's queue and batch.
    pub fn shared_raw(&mut self) -> Option<Bytes> {
        self.raw.take()
    }
}

impl Drop for Handing {
    fn drop(&mut self) {
        let mut s = self.cell.0.lock().expect("stream lock");
        if s.handing.get(&self.conn) == Some(&self.id) {
            s.handing.remove(&self.conn);
        }
    }
}

/// A stream's recent events and its connections' cursors.
#[derive(Debug, Default)]
struct Events {
    events: VecDeque<Event>,
    /// The absolute position of `events[0]`.
    base: u64,
    /// Per connection: the position after the last event it confirmed or created.
    cursors: HashMap<NetworkId, u64>,
    /// Per connection: the id of the event whose row it has not handed to the writer
    /// yet (from [`Stream::line`] until its [`Handing`] is dropped). Such an event is
    /// not settled whatever its age: its row is on the way.
    handing: HashMap<NetworkId, Seq>,
}

#[derive(Debug)]
struct Event {
    id: Seq,
    raw: Bytes,
    msgid: bool,
    created: Instant,
}

impl Stream {
    /// The stream's key, which the line's records carry (`NewMessage::stream`).
    pub fn key(&self) -> &Arc<StreamKey> {
        &self.key
    }

    /// Connection `conn` joined the channel: it confirms only events created from
    /// now on.
    pub fn enter(&self, conn: NetworkId) {
        let mut s = self.cell.0.lock().expect("stream lock");
        let end = s.end();
        s.cursors.insert(conn, end);
    }

    /// Connection `conn` left the channel or disconnected: its cursor is dropped
    /// (it starts over at the end when it is back).
    pub fn leave(&self, conn: NetworkId) {
        let mut s = self.cell.0.lock().expect("stream lock");
        s.cursors.remove(&conn);
        s.handing.remove(&conn);
    }

    /// The id of a shareable line that connection `conn` received, for a user whose
    /// newest id is `last`: an event's id when the line confirms one, else a new one
    /// (see the module comment). Always above `last`.
    ///
    /// Until the returned [`Handing`] is dropped, the event waits for this
    /// connection's row: the writer does not commit it (see `store::writer`). Drop
    /// it once the row is in the writer's queue.
    pub fn line(&self, conn: NetworkId, raw: &Bytes, msgid: bool, last: Seq) -> (Seq, Handing) {
        let mut s = self.cell.0.lock().expect("stream lock");
        // The time is read under the lock, as `settled_below` reads it: an event the
        // writer found settled by age cannot then be confirmed by a line that read
        // the clock earlier.
        let (id, shared) = self.line_locked(&mut s, conn, raw, msgid, last, Instant::now());
        s.handing.insert(conn, id);
        let handing = Handing {
            cell: self.cell.clone(),
            conn,
            id,
            raw: shared,
        };
        (id, handing)
    }

    #[cfg(test)]
    fn line_at(&self, conn: NetworkId, raw: &Bytes, msgid: bool, last: Seq, now: Instant) -> Seq {
        let mut s = self.cell.0.lock().expect("stream lock");
        self.line_locked(&mut s, conn, raw, msgid, last, now).0
    }

    fn line_locked(
        &self,
        s: &mut Events,
        conn: NetworkId,
        raw: &Bytes,
        msgid: bool,
        last: Seq,
        now: Instant,
    ) -> (Seq, Option<Bytes>) {
        s.expire(&self.limits, now);
        let end = s.end();
        let from = s.cursors.get(&conn).copied().unwrap_or(end).max(s.base);
        let window = if msgid {
            self.limits.msgid_window
        } else {
            self.limits.window
        };
        // From the cursor on (a range, not a skip: no walk over the events before it).
        let skip = (from - s.base) as usize;
        let found = s.events.range(skip..).enumerate().find(|(_, e)| {
            e.id > last
                && e.raw == *raw
                && e.msgid == msgid
                && now.saturating_duration_since(e.created) < window
        });
        if let Some((i, e)) = found {
            let (id, shared) = (e.id, e.raw.clone());
            let pos = from + i as u64 + 1;
            s.cursors.insert(conn, pos);
            return (id, Some(shared));
        }
        let id = self.clock.reserve(last, 1);
        s.events.push_back(Event {
            id,
            raw: raw.clone(),
            msgid,
            created: now,
        });
        let end = s.end();
        s.cursors.insert(conn, end);
        s.expire(&self.limits, now);
        (id, None)
    }
}

impl Events {
    fn end(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    /// The id of the oldest event that may still gain a row (`Seq::MAX` when none):
    /// one a connection confirmed or created but has not handed its row over yet,
    /// or one at or after the lowest cursor and younger than the window. Ids grow
    /// with position and so does the time of creation, so every event before it is
    /// settled.
    fn settled_below(&self, limits: &Limits, now: Instant) -> Seq {
        let lowest = self.cursors.values().copied().min().unwrap_or(self.end());
        let from = (lowest.max(self.base) - self.base) as usize;
        let by_cursor = self
            .events
            .range(from.min(self.events.len())..)
            .find(|e| now.saturating_duration_since(e.created) < limits.window)
            .map_or(Seq::MAX, |e| e.id);
        self.handing.values().copied().fold(by_cursor, Seq::min)
    }

    /// Drops events beyond the count bound, and from the front those nobody may
    /// confirm any more.
    fn expire(&mut self, limits: &Limits, now: Instant) {
        while let Some(e) = self.events.front() {
            let age = now.saturating_duration_since(e.created);
            let window = if e.msgid {
                limits.msgid_window
            } else {
                limits.window
            };
            if self.events.len() > limits.max_events || age >= window {
                self.events.pop_front();
                self.base += 1;
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> Streams {
        Streams::new("n1", Arc::new(SeqClock::new()))
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    const HI: &str = ":x!u@h PRIVMSG #c :hi";
    const HO: &str = ":x!u@h PRIVMSG #c :ho";

    /// One user: its newest id, and the ids its lines got.
    #[derive(Default)]
    struct User {
        last: Seq,
    }

    impl User {
        fn line(&mut self, s: &Stream, conn: NetworkId, raw: &str, t: Instant) -> Seq {
            let id = s.line_at(conn, &b(raw), false, self.last, t);
            assert!(id > self.last, "ids keep increasing");
            self.last = id;
            id
        }
    }

    #[test]
    fn a_quiet_stream_is_swept() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        let mut a = User::default();
        for i in 0..100 {
            a.line(&s, 1, &format!(":x!u@h PRIVMSG #c :{i}"), t);
        }
        let held = |s: &Stream| {
            let e = s.cell.0.lock().unwrap();
            (e.events.len(), e.events.capacity())
        };
        assert_eq!(held(&s).0, 100);
        // Within the window nothing goes; after it, everything, and the room too.
        assert_eq!(st.sweep_at(t + WINDOW / 2), 0);
        assert_eq!(st.sweep_at(t + WINDOW), 100);
        let (len, cap) = held(&s);
        assert_eq!(len, 0);
        assert!(cap <= 8, "capacity {cap} kept");
        // Still a stream: the next line takes the next id.
        let id = a.line(&s, 1, HI, t + WINDOW);
        assert!(id > 100);
        // A dropped stream is forgotten.
        drop(s);
        st.sweep_at(t + WINDOW);
        assert!(st.is_empty());
    }

    #[test]
    fn same_line_on_two_connections_is_one_event() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let (mut a, mut bb) = (User::default(), User::default());
        let x = a.line(&s, 1, HI, t);
        let y = a.line(&s, 1, HO, t);
        assert_eq!(bb.line(&s, 2, HI, t), x);
        assert_eq!(bb.line(&s, 2, HO, t), y);
        // The other stream of the same channel name on another server is another.
        let other = st.open("irc2:6667", b"#c".to_vec());
        other.enter(3);
        assert_ne!(User::default().line(&other, 3, HI, t), x);
        assert_eq!(st.open("irc:6667", b"#c".to_vec()).key(), s.key());
    }

    #[test]
    fn an_event_settles_once_every_cursor_passed_it_or_the_window_ends() {
        use crate::store::Settle;
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let key = s.key().clone();
        let t = Instant::now();
        let settled = |now| s.cell.0.lock().unwrap().settled_below(&s.limits, now);
        s.enter(1);
        s.enter(2);
        assert_eq!(st.settled_below(&key), Seq::MAX, "no event yet");
        let (mut a, mut bb) = (User::default(), User::default());
        let x = a.line(&s, 1, HI, t);
        assert_eq!(settled(t), x, "the second connection may still confirm it");
        let y = a.line(&s, 1, HO, t);
        assert_eq!(settled(t), x);
        assert_eq!(bb.line(&s, 2, HI, t), x);
        assert_eq!(settled(t), y);
        assert_eq!(bb.line(&s, 2, HO, t), y);
        assert_eq!(settled(t), Seq::MAX, "both moved past both");
        // A line only the first connection gets (op-only) holds until the window
        // ends, or until the other moves past it.
        let z = a.line(&s, 1, ":x!u@h NOTICE @#c :ops", t);
        assert_eq!(settled(t), z);
        assert_eq!(settled(t + WINDOW), Seq::MAX);
        s.leave(2);
        assert_eq!(settled(t), Seq::MAX, "nobody else is in the stream");
        // A stream nobody holds is settled.
        let other = StreamKey {
            node: "n1".into(),
            server: "nowhere:6667".into(),
            channel: b"#c".to_vec(),
        };
        assert_eq!(st.settled_below(&other), Seq::MAX);
    }

    #[test]
    fn a_confirmation_hands_back_the_events_bytes() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        s.enter(1);
        s.enter(2);
        let first = b(HI);
        let (x, mut a) = s.line(1, &first, false, 0);
        // The line that made the event keeps its own bytes.
        assert!(a.shared_raw().is_none());
        // Another connection's copy of the same line: its row may carry the event's
        // allocation instead of its own.
        let (y, mut bb) = s.line(2, &b(HI), false, 0);
        assert_eq!(y, x);
        let shared = bb.shared_raw().expect("confirmed");
        assert_eq!(shared, first);
        assert_eq!(shared.as_ptr(), first.as_ptr(), "one allocation");
        // A different line is a new event: nothing to share.
        let (_, mut c) = s.line(2, &b(HO), false, y);
        assert!(c.shared_raw().is_none());
    }

    #[test]
    fn a_confirmation_holds_its_event_until_its_row_is_queued() {
        use crate::store::Settle;
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let key = s.key().clone();
        let at = |now| s.cell.0.lock().unwrap().settled_below(&s.limits, now);
        s.enter(1);
        s.enter(2);
        let (x, a) = s.line(1, &b(HI), false, 0);
        drop(a);
        assert_eq!(
            st.settled_below(&key),
            x,
            "the second connection may confirm it"
        );
        let (y, bb) = s.line(2, &b(HI), false, 0);
        assert_eq!(y, x);
        // Both moved past it, and the window ended: still held, its row is on its way.
        assert_eq!(st.settled_below(&key), x);
        assert_eq!(at(Instant::now() + 2 * WINDOW), x);
        drop(bb);
        assert_eq!(st.settled_below(&key), Seq::MAX);

        // A confirmation released late does not release a newer one.
        s.leave(2);
        let (z1, old) = s.line(1, &b(HO), false, x);
        let (z2, new) = s.line(1, &b(HI), false, z1);
        drop(old);
        assert_eq!(st.settled_below(&key), z2);
        drop(new);
        assert_eq!(st.settled_below(&key), Seq::MAX);
        // Leaving drops what the connection held.
        let (_, kept) = s.line(1, &b(HO), false, z2);
        s.leave(1);
        assert_eq!(st.settled_below(&key), Seq::MAX);
        drop(kept);
    }

    #[test]
    fn identical_lines_are_two_events() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let (mut a, mut bb) = (User::default(), User::default());
        let x1 = a.line(&s, 1, HI, t);
        let x2 = a.line(&s, 1, HI, t);
        assert_ne!(x1, x2);
        assert_eq!(bb.line(&s, 2, HI, t), x1);
        assert_eq!(bb.line(&s, 2, HI, t), x2);
        // A third identical line on the second connection is new.
        let x3 = bb.line(&s, 2, HI, t);
        assert!(x3 > x2);
        assert_eq!(a.line(&s, 1, HI, t), x3);
    }

    #[test]
    fn a_late_joiner_does_not_confirm_earlier_events() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        let (mut a, mut late) = (User::default(), User::default());
        let before = a.line(&s, 1, HI, t);
        // The late joiner joins, then the same line is said again: it gets the second
        // event, never the first, even though its newest id is below both.
        s.enter(2);
        let after = a.line(&s, 1, HI, t);
        assert_eq!(late.line(&s, 2, HI, t), after);
        assert_ne!(after, before);
        // A connection the stream never saw join starts at the end too.
        let mut other = User::default();
        let new = other.line(&s, 3, HI, t);
        assert!(new > after);
    }

    #[test]
    fn a_connection_that_missed_a_line_skips_it() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let (mut op, mut voice) = (User::default(), User::default());
        let x = op.line(&s, 1, HI, t);
        let only_ops = op.line(&s, 1, ":x!u@h NOTICE @#c :ops only", t);
        let y = op.line(&s, 1, HO, t);
        assert_eq!(voice.line(&s, 2, HI, t), x);
        assert_eq!(voice.line(&s, 2, HO, t), y);
        assert_ne!(only_ops, y);
        // The connection that saw the op notice first: the other skips it too.
        s.enter(3);
        s.enter(4);
        let (mut p, mut q) = (User::default(), User::default());
        let n = p.line(&s, 3, ":x!u@h NOTICE @#c :again", t);
        let z = q.line(&s, 4, HI, t);
        assert_eq!(p.line(&s, 3, HI, t), z);
        assert!(z > n);
    }

    #[test]
    fn an_event_not_above_the_users_last_id_is_not_confirmed() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let (mut a, mut bb) = (User::default(), User::default());
        let x = a.line(&s, 1, HI, t);
        // Meanwhile the second user stored another line (a private message) with a
        // newer id from the clock.
        bb.last = st.clock().reserve(bb.last, 1);
        let y = bb.line(&s, 2, HI, t);
        assert!(y > x, "a new event above the user's newest id");
        // Its cursor is past both now: the next line matches the next event.
        let z = a.line(&s, 1, HO, t);
        assert_eq!(bb.line(&s, 2, HO, t), z);
    }

    #[test]
    fn the_window_bounds_matching_without_msgid() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let (mut a, mut bb) = (User::default(), User::default());
        let x = a.line(&s, 1, HI, t);
        let later = t + WINDOW + Duration::from_millis(1);
        let y = bb.line(&s, 2, HI, later);
        assert_ne!(x, y, "too late to share");
    }

    #[test]
    fn msgid_lines_match_beyond_the_window() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let raw = b("@msgid=abc :x!u@h PRIVMSG #c :hi");
        let x = s.line_at(1, &raw, true, 0, t);
        let later = t + WINDOW * 5;
        assert_eq!(s.line_at(2, &raw, true, 0, later), x);
        // Beyond the msgid window, not.
        let raw2 = b("@msgid=abd :x!u@h PRIVMSG #c :hi");
        let y = s.line_at(1, &raw2, true, x, t);
        let too_late = t + MSGID_WINDOW;
        assert_ne!(s.line_at(2, &raw2, true, x, too_late), y);
    }

    #[test]
    fn the_count_bounds_a_stream() {
        let limits = Limits {
            max_events: 4,
            ..Limits::default()
        };
        let st = Streams::with_limits("n1", Arc::new(SeqClock::new()), limits);
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let (mut a, mut bb) = (User::default(), User::default());
        let first = a.line(&s, 1, ":x PRIVMSG #c :0", t);
        let mut ids = Vec::new();
        for i in 1..=4 {
            ids.push(a.line(&s, 1, &format!(":x PRIVMSG #c :{i}"), t));
        }
        // The first event fell out: the second connection's line is new.
        let late = bb.line(&s, 2, ":x PRIVMSG #c :0", t);
        assert_ne!(late, first);
        // It now sits at the end; the others are behind its cursor.
        assert_ne!(bb.line(&s, 2, ":x PRIVMSG #c :1", t), ids[0]);
        let inner = s.cell.0.lock().unwrap();
        assert!(inner.events.len() <= 4);
    }

    #[test]
    fn a_connection_that_leaves_starts_over_at_the_end() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        let t = Instant::now();
        s.enter(1);
        s.enter(2);
        let (mut a, mut bb) = (User::default(), User::default());
        let x = a.line(&s, 1, HI, t);
        s.leave(2);
        // Disconnected, it did not receive the line; back, it does not confirm it.
        s.enter(2);
        let y = bb.line(&s, 2, HI, t);
        assert_ne!(x, y);
    }

    #[test]
    fn streams_nobody_holds_are_dropped() {
        let st = streams();
        let s = st.open("irc:6667", b"#c".to_vec());
        s.enter(1);
        assert_eq!(st.len(), 1);
        let again = st.open("irc:6667", b"#c".to_vec());
        drop(s);
        assert_eq!(st.len(), 1);
        drop(again);
        assert!(st.is_empty());
    }
}
