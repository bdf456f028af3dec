//! Shared channel lines stored once (migration 0018, docs/design/store-once.md): the
//! part of the batch insert both backends do alike.
//!
//! Rows of a batch with a [`NewMessage::stream`] are grouped by (stream, seq): each
//! group is one `events` row, and each row of the group adds its buffer to the event's
//! *audience* (an interned set of buffers, `audiences` + `audience_members`). When the
//! event is already stored (a late confirmation in a later batch), its audience is
//! widened to the union of the old and the new members, never narrowed, so retrying a
//! batch changes nothing.
//!
//! Stream ids and audience ids are cached per store, keyed by the stream key and by
//! (stream, [`audience_hash`] of the sorted member buffers: the table's own unique
//! key, 40 bytes an entry whatever the audience's size), and filled only after the
//! batch committed. The cache is emptied whenever buffers are deleted (user or
//! network removal), since SQLite may hand a deleted buffer's id out again.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use sqlx::{PgConnection, SqliteConnection};

use super::backend::Query;
use super::sql::{sized_chunks, Sql};
use super::types::{to_ms, NetworkId, NewMessage, Seq, StreamKey, UserId};
use super::StoreError;

/// Rows per multi-row statement (at most 8 parameters a row: under SQLite's 32766 and
/// PostgreSQL's 65535); smaller ones in powers of two ([`sized_chunks`]).
const CHUNK: usize = 1024;
/// Audiences the cache keeps before it starts over (~8 MB of keys and ids at most:
/// a key is the audience's hash, not its member list).
const CACHE_AUDIENCES: usize = 100_000;
/// Audiences the retention pass looks at per transaction ([`collect_audiences`]).
pub(super) const COLLECT_WINDOW: i64 = 1000;

/// A connection inside a write transaction, of either backend.
pub(super) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Conn<'_> {
    fn query<'a>(&'a mut self, sql: impl Into<Sql<'a>>) -> Query<'a> {
        match self {
            Conn::Sqlite(c) => Query::on_sqlite(c, sql.into()),
            Conn::Postgres(c) => Query::on_postgres(c, sql.into()),
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }
}

/// A shared row of a batch, with the ids its buffer and body got.
pub(super) struct SharedRow<'m> {
    pub m: &'m NewMessage,
    pub buffer_id: i64,
    pub body_id: i64,
}

/// Member buffers of an audience: buffer → (user, network).
type Members = BTreeMap<i64, (UserId, NetworkId)>;

/// An audience as the cache knows it: (stream, [`audience_hash`] of its buffers).
type AudienceKey = (i64, [u8; 32]);

/// The ids of streams and audiences already stored.
#[derive(Default)]
pub(super) struct SharedCache {
    inner: Mutex<CacheInner>,
    /// Where the retention pass over audiences goes on (`Store::collect_audiences`).
    collect_cursor: AtomicI64,
    /// Stored events whose audience a later batch widened (committed).
    widened: AtomicU64,
}

#[derive(Default)]
struct CacheInner {
    streams: HashMap<StreamKey, i64>,
    audiences: HashMap<AudienceKey, i64>,
}

/// What a batch learnt, for the cache once it committed.
#[derive(Default)]
pub(super) struct CacheUpdate {
    streams: Vec<(StreamKey, i64)>,
    audiences: Vec<(AudienceKey, i64)>,
    /// Audiences deleted by the batch (partial ones no event refers to any more).
    dropped: Vec<(AudienceKey, i64)>,
    /// Events the batch widened.
    widened: u64,
}

impl SharedCache {
    /// Forgets everything (buffers were deleted).
    pub(super) fn clear(&self) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.streams.clear();
        c.audiences.clear();
    }

    /// Keeps what a committed batch learnt.
    pub(super) fn apply(&self, u: CacheUpdate) {
        self.widened.fetch_add(u.widened, Ordering::Relaxed);
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if c.audiences.len() + u.audiences.len() > CACHE_AUDIENCES {
            c.audiences.clear();
        }
        c.streams.extend(u.streams);
        c.audiences.extend(u.audiences);
        for (key, id) in u.dropped {
            if c.audiences.get(&key) == Some(&id) {
                c.audiences.remove(&key);
            }
        }
    }

    fn stream(&self, k: &StreamKey) -> Option<i64> {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.streams.get(k).copied()
    }

    fn audience(&self, k: &AudienceKey) -> Option<i64> {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.audiences.get(k).copied()
    }

    /// Stored events whose audience a later batch widened, since the store opened.
    pub(super) fn widened(&self) -> u64 {
        self.widened.load(Ordering::Relaxed)
    }

    pub(super) fn collect_cursor(&self) -> i64 {
        self.collect_cursor.load(Ordering::Relaxed)
    }

    pub(super) fn set_collect_cursor(&self, after: i64) {
        self.collect_cursor.store(after, Ordering::Relaxed);
    }

    /// Which of `ids` the cache holds (the writer may use them without a look-up).
    fn cached_audiences(&self, ids: &[i64]) -> HashSet<i64> {
        let wanted: HashSet<i64> = ids.iter().copied().collect();
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.audiences
            .values()
            .filter(|id| wanted.contains(id))
            .copied()
            .collect()
    }
}

/// The content address of an audience: SHA-256 of its member buffer ids, in order.
fn audience_hash<'a>(buffers: impl IntoIterator<Item = &'a i64>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for b in buffers {
        h.update(b.to_be_bytes());
    }
    h.finalize().into()
}

/// One event of a batch: the first row's fields, and every row's buffer.
struct Event<'m> {
    key: &'m StreamKey,
    seq: Seq,
    first: &'m NewMessage,
    body_id: i64,
    members: Members,
}

/// The batch's shared rows grouped into events, in order of first arrival.
fn group<'m>(rows: &[SharedRow<'m>]) -> Vec<Event<'m>> {
    let mut index: HashMap<(&StreamKey, Seq), usize> = HashMap::new();
    let mut events: Vec<Event> = Vec::new();
    for r in rows {
        let Some(key) = r.m.stream.as_deref() else {
            continue;
        };
        let i = *index.entry((key, r.m.seq)).or_insert_with(|| {
            events.push(Event {
                key,
                seq: r.m.seq,
                first: r.m,
                body_id: r.body_id,
                members: Members::new(),
            });
            events.len() - 1
        });
        events[i]
            .members
            .insert(r.buffer_id, (r.m.user_id, r.m.network_id));
    }
    events
}

fn clean(s: &str, pg: bool) -> Cow<'_, str> {
    if pg && s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
    } else {
        Cow::Borrowed(s)
    }
}

/// Stores the shared rows of a batch (see the module doc) in the caller's
/// transaction. Returns what the cache may learn once that transaction committed.
pub(super) async fn insert_events(
    conn: &mut Conn<'_>,
    cache: &SharedCache,
    rows: &[SharedRow<'_>],
) -> Result<CacheUpdate, StoreError> {
    let mut update = CacheUpdate::default();
    let events = group(rows);
    if events.is_empty() {
        return Ok(update);
    }
    let pg = conn.is_postgres();

    // Streams: from the cache, else created (or found) one by one: a stream is new
    // once per channel per node.
    let mut stream_ids: HashMap<&StreamKey, i64> = HashMap::new();
    for e in &events {
        if stream_ids.contains_key(e.key) {
            continue;
        }
        let id = match cache.stream(e.key) {
            Some(id) => id,
            None => {
                conn.query(
                    "INSERT INTO streams (node, server, channel) VALUES ($1, $2, $3) \
                     ON CONFLICT (node, server, channel) DO NOTHING",
                )
                .bind(e.key.node.as_str())
                .bind(e.key.server.as_str())
                .bind(&e.key.channel[..])
                .execute()
                .await?;
                let id: i64 = conn
                    .query(
                        "SELECT id FROM streams WHERE node = $1 AND server = $2 AND channel = $3",
                    )
                    .bind(e.key.node.as_str())
                    .bind(e.key.server.as_str())
                    .bind(&e.key.channel[..])
                    .fetch_scalar()
                    .await?;
                update.streams.push((e.key.clone(), id));
                id
            }
        };
        stream_ids.insert(e.key, id);
    }

    // Events stored already (late confirmations, retried batches) and their audiences.
    let mut existing: HashMap<(i64, Seq), i64> = HashMap::new();
    for chunk in sized_chunks(&events, CHUNK) {
        // A join with the list rather than `(stream_id, id) IN (VALUES …)`, which
        // SQLite answers by scanning `events`.
        let mut sql = Sql::new("SELECT e.stream_id, e.id, e.audience_id FROM (VALUES ");
        for (i, e) in chunk.iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" });
            sql.push_bind(stream_ids[e.key]).push(", ");
            sql.push_bind(e.seq).push(")");
        }
        sql.push(") v JOIN events e ON e.stream_id = v.column1 AND e.id = v.column2");
        let found: Vec<(i64, i64, i64)> = conn.query(sql).fetch_all().await?;
        existing.extend(found.into_iter().map(|(s, id, a)| ((s, id), a)));
    }
    let mut old_members: HashMap<i64, Members> = HashMap::new();
    if !existing.is_empty() {
        let mut ids: Vec<i64> = existing.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for chunk in sized_chunks(&ids, CHUNK) {
            let mut sql = Sql::new(
                "SELECT audience_id, buffer_id, user_id, network_id FROM audience_members \
                 WHERE audience_id IN (",
            );
            for (i, a) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push_bind(*a);
            }
            sql.push(")");
            let found: Vec<(i64, i64, i64, i64)> = conn.query(sql).fetch_all().await?;
            for (a, b, u, n) in found {
                old_members.entry(a).or_default().insert(b, (u, n));
            }
        }
    }

    // Each event's audience: its rows' buffers, joined with the stored audience's.
    // `None`: stored with an audience that already holds every row's buffer.
    let mut targets: Vec<Option<Members>> = Vec::with_capacity(events.len());
    for e in &events {
        let sid = stream_ids[e.key];
        match existing.get(&(sid, e.seq)) {
            None => targets.push(Some(e.members.clone())),
            Some(a) => {
                let old = old_members.get(a).cloned().unwrap_or_default();
                if e.members.keys().all(|b| old.contains_key(b)) {
                    targets.push(None);
                } else {
                    let mut union = old;
                    union.extend(e.members.iter().map(|(b, un)| (*b, *un)));
                    targets.push(Some(union));
                }
            }
        }
    }

    // Audiences: interned per stream by their member list.
    let mut audience_ids: HashMap<AudienceKey, i64> = HashMap::new();
    let mut audience_of: Vec<Option<i64>> = Vec::with_capacity(events.len());
    for (e, t) in events.iter().zip(&targets) {
        let Some(members) = t else {
            audience_of.push(None);
            continue;
        };
        let key = (stream_ids[e.key], audience_hash(members.keys()));
        if let Some(&id) = audience_ids.get(&key) {
            audience_of.push(Some(id));
            continue;
        }
        let id = match cache.audience(&key) {
            Some(id) => id,
            None => {
                let id = intern_audience(conn, key, members).await?;
                update.audiences.push((key, id));
                id
            }
        };
        audience_ids.insert(key, id);
        audience_of.push(Some(id));
    }

    // New events, many per statement; widened ones one by one.
    let new: Vec<(&Event, i64)> = events
        .iter()
        .zip(&audience_of)
        .filter(|(e, _)| !existing.contains_key(&(stream_ids[e.key], e.seq)))
        .filter_map(|(e, a)| a.map(|a| (e, a)))
        .collect();
    for chunk in sized_chunks(&new, CHUNK) {
        let mut sql = Sql::new(
            "INSERT INTO events (stream_id, id, audience_id, time, sender, command, msgid, body_id) VALUES ",
        );
        for (i, (e, a)) in chunk.iter().enumerate() {
            let m = e.first;
            sql.push(if i == 0 { "(" } else { ", (" });
            sql.push_bind(stream_ids[e.key]).push(", ");
            sql.push_bind(e.seq).push(", ");
            sql.push_bind(*a).push(", ");
            sql.push_bind(to_ms(m.time)).push(", ");
            sql.push_bind(clean(&m.sender, pg).into_owned()).push(", ");
            sql.push_bind(clean(&m.command, pg).into_owned()).push(", ");
            sql.push_bind(m.msgid.as_deref().map(|s| clean(s, pg).into_owned()))
                .push(", ");
            sql.push_bind(e.body_id).push(")");
        }
        sql.push(" ON CONFLICT (stream_id, id) DO NOTHING");
        conn.query(sql).execute().await?;
    }
    let mut left: BTreeMap<i64, i64> = BTreeMap::new();
    for (e, a) in events.iter().zip(&audience_of) {
        let sid = stream_ids[e.key];
        if let (Some(a), Some(old)) = (a, existing.get(&(sid, e.seq))) {
            conn.query("UPDATE events SET audience_id = $1 WHERE stream_id = $2 AND id = $3")
                .bind(*a)
                .bind(sid)
                .bind(e.seq)
                .execute()
                .await?;
            update.widened += 1;
            if old != a {
                left.insert(*old, sid);
            }
        }
    }

    // The audiences widened events left behind. When a line's confirmations span
    // batches (a big channel whose actors take longer than a batch to handle it), the
    // first batch stores the event with the members seen so far: a partial audience,
    // a different one for nearly every line. Once no event refers to it any more it
    // is deleted with its member rows, so partial audiences do not pile up; the
    // cache forgets it once the batch committed. One still used in this batch, or by
    // any event, stays.
    let used: std::collections::HashSet<i64> = audience_ids.values().copied().collect();
    for (old, sid) in left {
        if used.contains(&old) {
            continue;
        }
        let gone = conn
            .query(
                "DELETE FROM audiences WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM events WHERE audience_id = $1)",
            )
            .bind(old)
            .execute()
            .await?;
        if gone > 0 {
            // Not left to the cascade: SQLite's writer connection does not check
            // foreign keys (see `SqliteDb::connect`).
            conn.query("DELETE FROM audience_members WHERE audience_id = $1")
                .bind(old)
                .execute()
                .await?;
            let hash = audience_hash(old_members.get(&old).into_iter().flat_map(|m| m.keys()));
            update.dropped.push(((sid, hash), old));
        }
    }
    confirm_audiences(conn, cache, audience_ids.values().copied()).await?;
    Ok(update)
}

/// The id of the audience `(stream, hash)` whose buffers are `members`' (with their
/// users and networks), created with its member rows when there is none.
async fn intern_audience(
    conn: &mut Conn<'_>,
    (stream, hash): AudienceKey,
    members: &Members,
) -> Result<i64, StoreError> {
    let created: Option<i64> = conn
        .query(
            "INSERT INTO audiences (stream_id, hash) VALUES ($1, $2) \
             ON CONFLICT (stream_id, hash) DO NOTHING RETURNING id",
        )
        .bind(stream)
        .bind(&hash[..])
        .fetch_optional_scalar()
        .await?;
    let Some(id) = created else {
        return Ok(conn
            .query("SELECT id FROM audiences WHERE stream_id = $1 AND hash = $2")
            .bind(stream)
            .bind(&hash[..])
            .fetch_scalar()
            .await?);
    };
    let rows: Vec<(&i64, &(UserId, NetworkId))> = members.iter().collect();
    for chunk in sized_chunks(&rows, CHUNK) {
        let mut sql = Sql::new(
            "INSERT INTO audience_members (audience_id, buffer_id, user_id, network_id) VALUES ",
        );
        for (i, (b, (u, n))) in chunk.iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" });
            sql.push_bind(id).push(", ");
            sql.push_bind(**b).push(", ");
            sql.push_bind(*u).push(", ");
            sql.push_bind(*n).push(")");
        }
        conn.query(sql).execute().await?;
    }
    Ok(id)
}

/// Checks, at the end of a batch, that every audience its events now refer to still
/// exists, and keeps it so until the batch commits; otherwise the batch fails with
/// [`StoreError::Raced`] (the writer retries it) after the cache is emptied, so the
/// retry interns its audiences afresh. This is what makes [`collect_audiences`] safe
/// against the writer's cached (or just looked-up) audience ids:
///
/// - SQLite: both run in `BEGIN IMMEDIATE` transactions, one after the other. A
///   collection that committed before this batch took the write lock is seen here; one
///   after it sees this batch's events and keeps their audiences.
/// - PostgreSQL: the check takes `FOR KEY SHARE` on each audience row. The collection
///   locks its candidates `FOR UPDATE SKIP LOCKED` first and only then, in a new
///   statement (a fresh snapshot), deletes the ones no event refers to. So either this
///   batch locked first (the collection skips the audience, or deletes it only after
///   this batch committed, when its events are visible and keep it), or the collection
///   locked first (this check waits for it, then finds the row gone and fails).
///
/// So a stale id never ends up in a committed event: an event never points at a
/// deleted audience.
async fn confirm_audiences(
    conn: &mut Conn<'_>,
    cache: &SharedCache,
    ids: impl Iterator<Item = i64>,
) -> Result<(), StoreError> {
    let mut ids: Vec<i64> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    let lock = if conn.is_postgres() {
        " ORDER BY id FOR KEY SHARE"
    } else {
        ""
    };
    for chunk in sized_chunks(&ids, CHUNK) {
        let mut sql = Sql::new("SELECT id FROM audiences WHERE id IN (");
        for (i, a) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push_bind(*a);
        }
        sql.push(")").push(lock);
        let found: Vec<i64> = conn.query(sql).fetch_column().await?;
        if found.len() != chunk.len() {
            cache.clear();
            return Err(StoreError::Raced("an audience was collected"));
        }
    }
    Ok(())
}

/// One step of the retention pass over audiences (in the caller's transaction):
/// among the [`COLLECT_WINDOW`] audiences with ids above `after`, deletes those no
/// event refers to, with their member rows. Audiences with events are kept (their
/// events go by `Store::collect_events` first), and so are the ones the writer's
/// cache holds: the writer may put them on its next events without looking at the
/// table. One it does not hold reaches the cache only once an event that refers to it
/// committed, which keeps it; [`confirm_audiences`] covers the races in between.
/// Without this, churn in a big channel (every membership change interns an audience
/// of ~N member rows) keeps every audience it ever made.
///
/// Returns how many were deleted and the highest id looked at (`None`: no audience
/// above `after`, the pass is done).
pub(super) async fn collect_audiences(
    conn: &mut Conn<'_>,
    cache: &SharedCache,
    after: i64,
) -> Result<(u64, Option<i64>), StoreError> {
    let window = "SELECT id FROM audiences WHERE id > $1 ORDER BY id LIMIT $2";
    let last: Option<i64> = conn
        .query(format!("SELECT MAX(w.id) FROM ({window}) w"))
        .bind(after)
        .bind(COLLECT_WINDOW)
        .fetch_scalar()
        .await?;
    let Some(last) = last else {
        return Ok((0, None));
    };
    let unused: Vec<i64> = conn
        .query(format!(
            "SELECT w.id FROM ({window}) w \
             WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.audience_id = w.id)"
        ))
        .bind(after)
        .bind(COLLECT_WINDOW)
        .fetch_column()
        .await?;
    let cached = cache.cached_audiences(&unused);
    let mut unused: Vec<i64> = unused.into_iter().filter(|a| !cached.contains(a)).collect();
    let in_list = |sql: &mut Sql<'_>, ids: &[i64]| {
        for (i, a) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push_bind(*a);
        }
    };
    if conn.is_postgres() && !unused.is_empty() {
        // Skipped: audiences a writer's batch holds (`confirm_audiences`).
        let mut sql = Sql::new("SELECT id FROM audiences WHERE id IN (");
        in_list(&mut sql, &unused);
        sql.push(") ORDER BY id FOR UPDATE SKIP LOCKED");
        unused = conn.query(sql).fetch_column().await?;
    }
    if unused.is_empty() {
        return Ok((0, Some(last)));
    }
    // A new statement: events committed while the rows were locked count.
    let mut sql = Sql::new("DELETE FROM audiences WHERE id IN (");
    in_list(&mut sql, &unused);
    sql.push(
        ") AND NOT EXISTS (SELECT 1 FROM events e WHERE e.audience_id = audiences.id) \
         RETURNING id",
    );
    let gone: Vec<i64> = conn.query(sql).fetch_column().await?;
    if !gone.is_empty() {
        // Not left to the cascade: SQLite's writer connection does not check
        // foreign keys (see `SqliteDb::connect`), and this may run on it.
        let mut sql = Sql::new("DELETE FROM audience_members WHERE audience_id IN (");
        in_list(&mut sql, &gone);
        sql.push(")");
        conn.query(sql).execute().await?;
    }
    Ok((gone.len() as u64, Some(last)))
}
