//! The backlog: storing messages (through the backend's batch insert), reading pages of
//! history, search (the backend's), `CHATHISTORY TARGETS`, client positions and
//! retention. Also what both backends' batch inserts and searches share.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::shared;
use super::sql::Sql;
use super::types::{
    from_ms, to_ms, HistoryQuery, MessageRow, NetworkId, NewMessage, SearchQuery, Seq,
    StoredMessage, UserId, LAST_MESSAGE_AT_STEP_MS, MESSAGE_COLUMNS,
};
use super::{not_found_on_fk, Store, StoreError};

impl Store {
    /// The highest stored seq of the user, 0 when none.
    pub async fn last_seq(&self, user: UserId) -> Result<Seq, StoreError> {
        let v: Option<i64> = self
            .db
            .query(format!("SELECT {LAST_SEQ}"))
            .bind(user)
            .fetch_scalar()
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Where the owner of `user` numbers new lines from: its newest stored line, or
    /// below its reserved floor when a failover reserved ids for what the old owner
    /// may still hold (see [`Store::adopt_user`]).
    pub async fn seq_base(&self, user: UserId) -> Result<Seq, StoreError> {
        let stored = self.last_seq(user).await?;
        let floor = self.seq_floor(user).await?;
        Ok(stored.max(floor - 1))
    }

    /// Stores a batch in one transaction. Messages already stored (same user and seq)
    /// are skipped, so retrying a batch is safe; messages whose network is gone (or does
    /// not belong to the message's user) are dropped.
    pub async fn insert_messages(&self, batch: &[NewMessage]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.db.insert_messages(batch, None).await.map(|_| ())
    }

    /// Like [`Store::insert_messages`], fenced: in the same transaction, messages whose
    /// `(user, node, epoch)` no longer matches the user's owner row are dropped. Returns
    /// the users whose messages were dropped (they lost ownership).
    pub async fn insert_messages_fenced(
        &self,
        node: &str,
        batch: &[NewMessage],
    ) -> Result<Vec<UserId>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.db.insert_messages(batch, Some(node)).await
    }

    /// A page of backlog; see [`HistoryQuery`].
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        if q.limit <= 0 {
            return Ok(Vec::new());
        }
        // Per-user rows and shared events are read apart, each through its own
        // index with its own LIMIT, and merged: a view over both would be sorted
        // whole before the LIMIT applies.
        let mut rows: Vec<MessageRow> = Vec::new();
        for table in LINE_SOURCES {
            if table == "shared_lines" {
                if let Some(got) = self.shared_history_per_audience(q).await? {
                    rows.extend(got);
                    continue;
                }
            }
            rows.extend(self.history_of(table, q).await?);
        }
        Ok(merge_page(rows, q.newest_first, q.limit))
    }

    /// The shared lines of a page of one buffer, read per audience of the buffer: each
    /// audience's events are one range of `events_audience` in id order, so each read
    /// stops after `limit` rows (through `shared_lines` they would be sorted whole
    /// first). `None` when the query is not of one buffer or the buffer is in more
    /// audiences than that is worth.
    async fn shared_history_per_audience(
        &self,
        q: &HistoryQuery,
    ) -> Result<Option<Vec<MessageRow>>, StoreError> {
        const MAX_AUDIENCES: usize = 16;
        let (Some(network), Some(key)) = (q.network, q.buffer_key.as_deref()) else {
            return Ok(None);
        };
        let buffer: Option<(i64, i64)> = self
            .db
            .query(
                "SELECT b.id, b.shared_from FROM buffers b JOIN networks n ON n.id = b.network_id \
                 WHERE b.network_id = $1 AND b.key = $2 AND n.user_id = $3",
            )
            .bind(network)
            .bind(key)
            .bind(q.user)
            .fetch_optional()
            .await?;
        let Some((buffer, shared_from)) = buffer else {
            return Ok(Some(Vec::new()));
        };
        let audiences: Vec<i64> = self
            .db
            .query("SELECT audience_id FROM audience_members WHERE buffer_id = $1")
            .bind(buffer)
            .fetch_column()
            .await?;
        if audiences.len() > MAX_AUDIENCES {
            return Ok(None);
        }
        let mut rows = Vec::new();
        for audience in audiences {
            let mut sql = Sql::new(
                "SELECT m.id AS seq, b.network_id, b.name AS buffer, m.time, m.sender, m.command, \
                 bo.raw, bo.text, m.msgid \
                 FROM events m JOIN buffers b ON b.id = ",
            );
            sql.push_bind(buffer);
            sql.push(" JOIN bodies bo ON bo.id = m.body_id WHERE m.audience_id = ")
                .push_bind(audience);
            sql.push(" AND m.id >= ").push_bind(shared_from);
            if let Some(s) = q.before {
                sql.push(" AND m.id < ").push_bind(s);
            }
            if let Some(s) = q.after {
                sql.push(" AND m.id > ").push_bind(s);
            }
            if let Some(t) = q.from {
                sql.push(" AND m.time >= ").push_bind(to_ms(t));
            }
            if let Some(t) = q.to {
                sql.push(" AND m.time <= ").push_bind(to_ms(t));
            }
            sql.push(if q.newest_first {
                " ORDER BY m.audience_id DESC, m.id DESC"
            } else {
                " ORDER BY m.audience_id, m.id"
            });
            sql.push(" LIMIT ").push_bind(q.limit);
            rows.extend(self.db.query(sql).fetch_all::<MessageRow>().await?);
        }
        Ok(Some(rows))
    }

    /// [`Store::history`] of one source of lines (`messages` or `shared_lines`).
    async fn history_of(
        &self,
        table: &str,
        q: &HistoryQuery,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let mut sql = Sql::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM {table} m \
             JOIN buffers b ON b.id = m.buffer_id JOIN bodies bo ON bo.id = m.body_id \
             WHERE "
        ));
        push_filters(
            &mut sql,
            true,
            q.user,
            q.network,
            q.buffer_key.as_deref(),
            q.from,
            q.to,
            q.before,
        );
        if let Some(s) = q.after {
            sql.push(" AND m.seq > ").push_bind(s);
        }
        sql.push(if q.newest_first {
            " ORDER BY m.seq DESC"
        } else {
            " ORDER BY m.seq ASC"
        });
        sql.push(" LIMIT ").push_bind(q.limit);
        Ok(self.db.query(sql).fetch_all().await?)
    }

    /// Full-text search of the user's backlog, newest first; see [`SearchQuery`].
    pub async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError> {
        if q.limit <= 0 || q.text.trim().is_empty() {
            return Ok(Vec::new());
        }
        self.db.search(q).await
    }

    /// Buffers with messages between `from` and `to` (inclusive): name and latest time,
    /// newest first (for IRCv3 `CHATHISTORY TARGETS`).
    pub async fn targets(
        &self,
        user: UserId,
        network: NetworkId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Vec<u8>, DateTime<Utc>)>, StoreError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // Per buffer of the network, the time of its newest line (by seq) in the
        // window: read from the buffer's newest lines backwards (its primary key or
        // `messages_buffer_seq`), usually the first one when the window ends now.
        // Buffers quiet since before `from` are skipped by `last_message_at` (the
        // newest time stored in the buffer, kept to within `LAST_MESSAGE_AT_STEP_MS`
        // of it, hence `from` minus a step). No index on time is kept for this
        // (docs/benchmarks.md §9).
        // Per-user rows and shared events each give their newest line in the window
        // (seq and time); the newer of the two wins. Shared events are read per
        // audience of the buffer ([`TARGETS_SHARED`]), not through `shared_lines`,
        // which would merge the buffer's audiences by sorting their lines.
        let rows: Vec<TargetRow> = self
            .db
            .query(format!(
                "SELECT b.id, b.name, \
                   (SELECT m.seq FROM messages m WHERE m.buffer_id = b.id \
                      AND m.time >= $3 AND m.time <= $4 ORDER BY m.seq DESC LIMIT 1), \
                   (SELECT m.time FROM messages m WHERE m.buffer_id = b.id \
                      AND m.time >= $3 AND m.time <= $4 ORDER BY m.seq DESC LIMIT 1) \
                 FROM {TARGET_BUFFERS}"
            ))
            .bind(user)
            .bind(network)
            .bind(to_ms(from))
            .bind(to_ms(to))
            .bind(to_ms(from).saturating_sub(LAST_MESSAGE_AT_STEP_MS))
            .fetch_all()
            .await?;
        let per_audience: Vec<(i64, Option<i64>, Option<i64>)> = self
            .db
            .query(TARGETS_SHARED)
            .bind(user)
            .bind(network)
            .bind(to_ms(from))
            .bind(to_ms(to))
            .bind(to_ms(from).saturating_sub(LAST_MESSAGE_AT_STEP_MS))
            .fetch_all()
            .await?;
        // The newest shared event per buffer: the newest of its audiences' newest.
        let mut shared: HashMap<i64, (i64, i64)> = HashMap::new();
        for (buffer, seq, time) in per_audience {
            if let Some(st) = seq.zip(time) {
                let best = shared.entry(buffer).or_insert(st);
                if st.0 > best.0 {
                    *best = st;
                }
            }
        }
        let mut found: Vec<(i64, Vec<u8>, i64)> = rows
            .into_iter()
            .filter_map(|(id, name, ms, mt)| {
                let own = ms.zip(mt);
                let latest = match (own, shared.get(&id).copied()) {
                    (Some(a), Some(b)) => Some(if a.0 > b.0 { a.1 } else { b.1 }),
                    (a, b) => a.or(b).map(|x| x.1),
                };
                latest.map(|t| (id, name, t))
            })
            .collect();
        found.sort_unstable_by_key(|f| std::cmp::Reverse((f.2, f.0)));
        found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(found.into_iter().map(|(_, n, t)| (n, from_ms(t))).collect())
    }

    /// The last seq a client (by name) has seen on a network.
    pub async fn client_position(
        &self,
        network: NetworkId,
        client: &str,
    ) -> Result<Option<Seq>, StoreError> {
        Ok(self
            .db
            .query("SELECT seq FROM client_positions WHERE network_id = $1 AND client = $2")
            .bind(network)
            .bind(client)
            .fetch_optional_scalar()
            .await?)
    }

    /// Records what a client has seen; only moves forward.
    pub async fn set_client_position(
        &self,
        network: NetworkId,
        client: &str,
        seq: Seq,
    ) -> Result<(), StoreError> {
        self.db
            .query(
                "INSERT INTO client_positions (network_id, client, seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (network_id, client) DO UPDATE SET seq = excluded.seq \
                 WHERE excluded.seq > client_positions.seq",
            )
            .bind(network)
            .bind(client)
            .bind(seq)
            .execute()
            .await
            .map_err(not_found_on_fk(|| format!("network {network}")))?;
        Ok(())
    }

    /// Deletes the shared events no member buffer shows any more: per audience, those
    /// below the lowest `shared_from` of its members; and audiences left without
    /// members (their buffers were deleted) with all their events. Returns the number
    /// of events deleted.
    pub(super) async fn collect_events(&self) -> Result<u64, StoreError> {
        let floors: Vec<(i64, i64)> = self
            .db
            .query(
                "SELECT am.audience_id, MIN(b.shared_from) FROM audience_members am \
                 JOIN buffers b ON b.id = am.buffer_id GROUP BY am.audience_id",
            )
            .fetch_all()
            .await?;
        let mut deleted = 0;
        for (audience, floor) in floors {
            if floor > 0 {
                deleted += self
                    .db
                    .query("DELETE FROM events WHERE audience_id = $1 AND id < $2")
                    .bind(audience)
                    .bind(floor)
                    .execute()
                    .await?;
            }
        }
        let empty: Vec<i64> = self
            .db
            .query(
                "SELECT a.id FROM audiences a WHERE NOT EXISTS \
                 (SELECT 1 FROM audience_members am WHERE am.audience_id = a.id)",
            )
            .fetch_column()
            .await?;
        for audience in empty {
            deleted += self
                .db
                .query("DELETE FROM events WHERE audience_id = $1")
                .bind(audience)
                .execute()
                .await?;
            self.db
                .query("DELETE FROM audiences WHERE id = $1")
                .bind(audience)
                .execute()
                .await?;
        }
        Ok(deleted)
    }

    /// Deletes audiences no event refers to any more (with their member rows), a
    /// window of [`shared::COLLECT_WINDOW`] audiences per transaction and at most
    /// [`COLLECT_WINDOWS`] windows per retention pass; the next pass goes on where this
    /// one stopped, and starts over once it reached the end. See
    /// [`shared::collect_audiences`] for why a concurrent batch of the writer is safe.
    /// Returns the number of audiences deleted.
    pub(super) async fn collect_audiences(&self) -> Result<u64, StoreError> {
        let cache = self.db.shared_cache();
        let mut after = cache.collect_cursor();
        let mut deleted = 0;
        for _ in 0..COLLECT_WINDOWS {
            let mut tx = self.db.begin().await?;
            let (n, last) = shared::collect_audiences(&mut tx.conn(), cache, after).await?;
            tx.commit().await?;
            deleted += n;
            match last {
                Some(last) => after = last,
                None => {
                    after = 0;
                    break;
                }
            }
        }
        cache.set_collect_cursor(after);
        Ok(deleted)
    }

    /// Before the buffers `buffers` (an SQL list of ids given `$1`) are deleted: the
    /// audiences they belong to stop matching their member list (SQLite may give a
    /// deleted buffer's id to a new buffer, which must not join an old audience), and
    /// the cached ids are forgotten.
    pub(super) async fn before_deleting_buffers(
        &self,
        buffers: &str,
        bind: i64,
    ) -> Result<(), StoreError> {
        let gone = if self.db.name() == "sqlite" {
            "CAST('gone:' || id AS BLOB)"
        } else {
            "convert_to('gone:' || id, 'UTF8')"
        };
        self.db
            .query(format!(
                "UPDATE audiences SET hash = {gone} WHERE id IN \
                 (SELECT am.audience_id FROM audience_members am WHERE am.buffer_id IN ({buffers}))"
            ))
            .bind(bind)
            .execute()
            .await?;
        self.db.forget_shared();
        Ok(())
    }

    /// Deletes each user's messages beyond their max age and max count, then
    /// garbage-collects bodies no message refers to. Returns the number of messages
    /// deleted.
    pub async fn enforce_retention(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let users: Vec<(i64, Option<i64>, Option<i64>)> = self
            .db
            .query(
                "SELECT id, retention_max_age_days, retention_max_messages FROM users \
                 WHERE retention_max_age_days IS NOT NULL OR retention_max_messages IS NOT NULL",
            )
            .fetch_all()
            .await?;
        let mut deleted = 0;
        let user_buffers = "SELECT b.id FROM buffers b JOIN networks n ON n.id = b.network_id \
                            WHERE n.user_id = $1";
        for (user, max_age_days, max_messages) in users {
            if let Some(days) = max_age_days {
                let cutoff = to_ms(now - chrono::Duration::days(days.max(0)));
                // Through the user's buffers: each one's lines are one range of
                // `messages_buffer_seq` (on SQLite, of the table itself), read
                // once per retention interval; no index on time is kept for this.
                deleted += self
                    .db
                    .query(format!(
                        "DELETE FROM messages WHERE buffer_id IN ({user_buffers}) AND time < $2"
                    ))
                    .bind(user)
                    .bind(cutoff)
                    .execute()
                    .await?;
                // Shared events: the buffer stops showing them up to its newest one
                // older than the cutoff (`shared_from`); they are deleted below once no
                // member shows them.
                let hidden: i64 = self
                    .db
                    .query(format!(
                        "SELECT COUNT(*) FROM shared_lines WHERE buffer_id IN ({user_buffers}) \
                         AND time < $2"
                    ))
                    .bind(user)
                    .bind(cutoff)
                    .fetch_scalar()
                    .await?;
                if hidden > 0 {
                    self.db
                        .query(format!(
                            "UPDATE buffers SET shared_from = (SELECT MAX(sl.seq) + 1 \
                               FROM shared_lines sl WHERE sl.buffer_id = buffers.id AND sl.time < $2) \
                             WHERE id IN ({user_buffers}) AND EXISTS (SELECT 1 FROM shared_lines sl \
                               WHERE sl.buffer_id = buffers.id AND sl.time < $2)"
                        ))
                        .bind(user)
                        .bind(cutoff)
                        .execute()
                        .await?;
                    deleted += u64::try_from(hidden).unwrap_or(0);
                }
            }
            if let Some(max) = max_messages {
                // The newest line to drop, counting per-user rows and shared events.
                let cut: Option<i64> = self
                    .db
                    .query(
                        "SELECT seq FROM lines WHERE user_id = $1 \
                         ORDER BY seq DESC LIMIT 1 OFFSET $2",
                    )
                    .bind(user)
                    .bind(max.max(0))
                    .fetch_optional_scalar()
                    .await?;
                let Some(cut) = cut else { continue };
                deleted += self
                    .db
                    .query("DELETE FROM messages WHERE user_id = $1 AND seq <= $2")
                    .bind(user)
                    .bind(cut)
                    .execute()
                    .await?;
                let hidden: i64 = self
                    .db
                    .query("SELECT COUNT(*) FROM shared_lines WHERE user_id = $1 AND seq <= $2")
                    .bind(user)
                    .bind(cut)
                    .fetch_scalar()
                    .await?;
                if hidden > 0 {
                    self.db
                        .query(format!(
                            "UPDATE buffers SET shared_from = $2 + 1 \
                             WHERE id IN ({user_buffers}) AND shared_from <= $2"
                        ))
                        .bind(user)
                        .bind(cut)
                        .execute()
                        .await?;
                    deleted += u64::try_from(hidden).unwrap_or(0);
                }
            }
        }
        let events = self.collect_events().await?;
        let audiences = self.collect_audiences().await?;
        // Bodies nothing refers to any more: left by retention, deleted users and
        // networks, or batches retried after a lost commit acknowledgement.
        let bodies = self
            .db
            .query(
                "DELETE FROM bodies \
                 WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = bodies.id) \
                 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.body_id = bodies.id)",
            )
            .execute()
            .await?;
        tracing::debug!(
            messages = deleted,
            events,
            audiences,
            bodies,
            "retention enforced"
        );
        Ok(deleted)
    }
}

/// A buffer of `Store::targets`: id, name, then the seq and time of its newest
/// per-user row in the window.
type TargetRow = (i64, Vec<u8>, Option<i64>, Option<i64>);

/// The buffers `Store::targets` looks at: user `$1`'s on network `$2` with lines
/// since `$5`.
const TARGET_BUFFERS: &str = "buffers b JOIN networks n ON n.id = b.network_id \
     WHERE b.network_id = $2 AND n.user_id = $1 AND b.last_message_at >= $5";

/// For `Store::targets`, per audience of each buffer of [`TARGET_BUFFERS`]: the buffer,
/// and the seq and time of the audience's newest visible event between `$3` and `$4`.
/// Each is a walk down `events_audience` from its newest end (no sort: one audience,
/// in id order), usually one row when the window ends now.
pub(super) const TARGETS_SHARED: &str = "SELECT am.buffer_id, \
       (SELECT e.id FROM events e WHERE e.audience_id = am.audience_id \
          AND e.id >= b.shared_from AND e.time >= $3 AND e.time <= $4 \
          ORDER BY e.id DESC LIMIT 1), \
       (SELECT e.time FROM events e WHERE e.audience_id = am.audience_id \
          AND e.id >= b.shared_from AND e.time >= $3 AND e.time <= $4 \
          ORDER BY e.id DESC LIMIT 1) \
     FROM buffers b JOIN networks n ON n.id = b.network_id \
     JOIN audience_members am ON am.buffer_id = b.id \
     WHERE b.network_id = $2 AND n.user_id = $1 AND b.last_message_at >= $5";

/// Where a user's lines are (migration 0018): per-user rows, and the shared events of
/// the audiences their buffers belong to (the `shared_lines` view, shaped like
/// `messages`). Readers that page or search read each apart, through its own indexes,
/// and merge (see [`merge_page`]); the `lines` view joins both for the rest.
/// Windows of audiences one retention pass looks at (see `Store::collect_audiences`).
const COLLECT_WINDOWS: usize = 100;

pub(super) const LINE_SOURCES: [&str; 2] = ["messages", "shared_lines"];

/// An SQL expression: the highest seq of user `$1` (per-user rows or shared events,
/// visible or not: what new ids must stay above), NULL when none. Each audience's
/// newest event is one seek in `events_audience`.
pub(super) const LAST_SEQ: &str = "(SELECT MAX(s) FROM (\
     SELECT MAX(seq) AS s FROM messages WHERE user_id = $1 \
     UNION ALL SELECT (SELECT MAX(e.id) FROM events e WHERE e.audience_id = am.audience_id) AS s \
     FROM audience_members am WHERE am.user_id = $1) last_seq)";

/// The page of `limit` rows, by seq in the asked direction, from rows read apart.
pub(super) fn merge_page(
    rows: Vec<MessageRow>,
    newest_first: bool,
    limit: i64,
) -> Vec<StoredMessage> {
    let mut rows: Vec<StoredMessage> = rows.into_iter().map(Into::into).collect();
    if newest_first {
        rows.sort_unstable_by_key(|m| std::cmp::Reverse(m.seq));
    } else {
        rows.sort_unstable_by_key(|m| m.seq);
    }
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    rows
}

/// Appends the conditions history and search share (without `WHERE` or a leading
/// `AND`), to a query over `messages m JOIN buffers b`: the user's messages, of one
/// network, of one buffer, within seq and time bounds.
///
/// Each scope reads its own B-tree (docs/benchmarks.md §9 has the plans): one buffer
/// is a range of `(buffer_id, seq)`, named by a subquery that also checks the buffer
/// is the user's (so no `m.user_id` test, which PostgreSQL would AND in as a second
/// bitmap over all the user's messages); anything wider walks `(user_id, seq)` and
/// tests each row's buffer. The `+` in `+b.network_id` keeps both planners from
/// starting at the network's buffers instead (which reads every line of the network
/// and sorts it, where the walk stops after `limit` rows). A search starts from its
/// hits (`messages_body`) instead: `range` false tests the buffer per hit with
/// `+m.buffer_id`, since PostgreSQL would otherwise AND in a bitmap of the whole
/// buffer for each hit.
#[allow(clippy::too_many_arguments)]
fn push_filters<'a>(
    sql: &mut Sql<'a>,
    range: bool,
    user: UserId,
    network: Option<NetworkId>,
    buffer_key: Option<&'a [u8]>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    before: Option<Seq>,
) {
    match (network, buffer_key) {
        (Some(n), Some(k)) => {
            sql.push(if range { "m.buffer_id" } else { "+m.buffer_id" });
            sql.push(
                " = (SELECT b2.id FROM buffers b2 \
                 JOIN networks n2 ON n2.id = b2.network_id WHERE b2.network_id = ",
            )
            .push_bind(n);
            sql.push(" AND b2.key = ").push_bind(k);
            sql.push(" AND n2.user_id = ").push_bind(user).push(")");
        }
        (n, k) => {
            sql.push("m.user_id = ").push_bind(user);
            if let Some(n) = n {
                sql.push(" AND +b.network_id = ").push_bind(n);
            }
            if let Some(k) = k {
                sql.push(" AND b.key = ").push_bind(k);
            }
        }
    }
    if let Some(s) = before {
        sql.push(" AND m.seq < ").push_bind(s);
    }
    if let Some(t) = from {
        sql.push(" AND m.time >= ").push_bind(to_ms(t));
    }
    if let Some(t) = to {
        sql.push(" AND m.time <= ").push_bind(to_ms(t));
    }
}

/// [`push_filters`] of a search, and its sender (as the backend can store it).
pub(super) fn push_search_filters<'a>(
    sql: &mut Sql<'a>,
    q: &'a SearchQuery,
    sender: Option<&'a str>,
) {
    push_filters(
        sql,
        false,
        q.user,
        q.network,
        q.buffer_key.as_deref(),
        q.from,
        q.to,
        q.before,
    );
    if let Some(s) = sender {
        sql.push(" AND lower(m.sender) = lower(")
            .push_bind(s)
            .push(")");
    }
}

// ---- what both backends' batch inserts do alike ----

/// A buffer of a batch: (network, key).
pub(super) type BufferRef<'a> = (NetworkId, &'a [u8]);

/// The owner rows of a batch's users: user → (node, epoch).
pub(super) type Owners = HashMap<UserId, (Option<String>, i64)>;

/// The distinct values of `it`, sorted.
pub(super) fn distinct(it: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = it.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Splits a batch by fencing: the messages whose user `node` still owns at the
/// message's epoch, and the users of the others (distinct, sorted).
pub(super) fn split_fenced<'m>(
    batch: &'m [NewMessage],
    owners: &Owners,
    node: &str,
) -> (Vec<&'m NewMessage>, Vec<UserId>) {
    let (keep, drop): (Vec<&NewMessage>, Vec<&NewMessage>) = batch.iter().partition(|m| {
        owners
            .get(&m.user_id)
            .is_some_and(|(n, e)| n.as_deref() == Some(node) && *e == m.epoch)
    });
    (keep, distinct(drop.iter().map(|m| m.user_id)))
}

/// The messages whose network exists and belongs to the message's user (`owner`:
/// network → user).
pub(super) fn on_own_networks<'m>(
    batch: &[&'m NewMessage],
    owner: &HashMap<NetworkId, UserId>,
) -> Vec<&'m NewMessage> {
    batch
        .iter()
        .copied()
        .filter(|m| owner.get(&m.network_id) == Some(&m.user_id))
        .collect()
}

/// The distinct buffers of the messages, each with the name of its first message and
/// its latest message time.
pub(super) fn latest_per_buffer<'m>(
    valid: &[&'m NewMessage],
) -> HashMap<BufferRef<'m>, (&'m [u8], i64)> {
    let mut buffers: HashMap<BufferRef, (&[u8], i64)> = HashMap::new();
    for m in valid {
        let t = to_ms(m.time);
        let e = buffers
            .entry((m.network_id, &m.buffer_key[..]))
            .or_insert((&m.buffer[..], t));
        e.1 = e.1.max(t);
    }
    buffers
}
