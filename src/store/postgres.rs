//! The PostgreSQL backend: shared by the nodes of a cluster.
//!
//! What is PostgreSQL's own: connection setup (session settings), the batch insert
//! (arrays bound once and `UNNEST`ed, rows locked in key order, body ids handed out in
//! arrival order) and search through the `tsvector` index in windows of the newest
//! bodies. Everything else is the shared SQL of the `Store` methods.
//!
//! PostgreSQL TEXT cannot hold NUL characters, so they are stripped from message text
//! (the raw line, a BYTEA, keeps them).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};

use super::backend::Backend;
use super::backlog::{
    distinct, latest_per_buffer, on_own_networks, push_search_filters, split_fenced, Owners,
    LINE_SOURCES,
};
use super::shared::{insert_events, Conn, SharedCache, SharedRow};
use super::sql::{Param, Sql};
use super::types::*;
use super::{body_hash, StoreError};

/// A body of a batch: (raw, text without NUL).
type Body<'a> = (&'a [u8], Cow<'a, str>);

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub(super) struct PostgresDb {
    pool: PgPool,
    /// Ids of shared streams and audiences (`shared.rs`).
    pub(super) shared: SharedCache,
}

impl PostgresDb {
    pub(super) async fn connect(url: &str) -> Result<PostgresDb, StoreError> {
        // A node paused in the middle of a transaction (SIGSTOP) must not hold the
        // owner rows it locked (FOR SHARE) for ever: the server ends such a transaction.
        let opts = PgConnectOptions::from_str(url)?
            .options([("idle_in_transaction_session_timeout", "5s")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(PostgresDb {
            pool,
            shared: SharedCache::default(),
        })
    }

    /// The user's newest `q.limit` messages (filters applied) among those whose
    /// bodies are `ids` (newest first). Joined a page of ids at a time, stopping once
    /// the page is full: with the usual single page of results that is the first,
    /// and each id joined costs a few random reads when the cache is cold (200 cost
    /// about 90 ms at 10 million messages).
    async fn search_rows(
        &self,
        q: &SearchQuery,
        ids: &[i64],
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = usize::try_from(q.limit).unwrap_or(0);
        let mut rows: Vec<StoredMessage> = Vec::new();
        for chunk in ids.chunks(limit.max(1)) {
            let got = self.search_rows_of(q, chunk).await?;
            rows.extend(got.into_iter().map(StoredMessage::from));
            if rows.len() >= limit {
                break;
            }
        }
        rows.sort_by_key(|m| std::cmp::Reverse(m.seq));
        rows.truncate(limit);
        Ok(rows)
    }

    /// The user's messages (filters applied) whose bodies are `ids`, newest first.
    async fn search_rows_of(
        &self,
        q: &SearchQuery,
        ids: &[i64],
    ) -> Result<Vec<MessageRow>, StoreError> {
        let sender = q.sender.as_deref().map(strip_nul);
        // Per-user rows and shared events joined apart (the caller merges).
        let mut rows: Vec<MessageRow> = Vec::new();
        for table in LINE_SOURCES {
            let mut sql = Sql::new(format!(
                "SELECT {MESSAGE_COLUMNS} FROM bodies bo \
                 JOIN {table} m ON m.body_id = bo.id JOIN buffers b ON b.id = m.buffer_id \
                 WHERE bo.id = ANY("
            ));
            sql.push_bind(Param::Ints(ids)).push(") AND ");
            push_search_filters(&mut sql, q, sender.as_deref());
            sql.push(" ORDER BY m.seq DESC LIMIT ").push_bind(q.limit);
            rows.extend(sql.query_as::<Postgres, _>()?.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }
}

impl Backend for PostgresDb {
    type Db = Postgres;

    const NAME: &'static str = "postgres";

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn optimize(&self) -> Result<(), StoreError> {
        sqlx::query("ANALYZE bodies, messages, buffers")
            .execute(&self.pool)
            .await?;
        // Summarise the BRIN ranges autovacuum has not got to yet (autosummarize
        // queues them, but after a bulk load all 244 ranges of a million bodies were
        // still open). An open range matches every window, so searches read all of
        // it: at 1 million bodies the search p95 was 58 ms before this, 18 ms after.
        sqlx::query("SELECT brin_summarize_new_values('bodies_id_brin')")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Nothing to give back: the memory is the PostgreSQL server's.
    async fn release_memory(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn insert_messages(
        &self,
        batch: &[NewMessage],
        fence_node: Option<&str>,
    ) -> Result<Vec<UserId>, StoreError> {
        // A few statements per batch whatever its size: arrays bound once, UNNESTed.
        // Buffers and bodies are upserted in key order, so concurrent writers (one per
        // node) lock rows in the same order and do not deadlock.
        let mut tx = self.pool.begin().await?;

        // Fencing: keep only messages whose (user, node, epoch) still matches the owner
        // row. FOR SHARE makes a concurrent reassignment wait for this commit, so no
        // message of an old epoch lands after the new owner took over.
        let (batch, fenced) = match fence_node {
            None => (batch.iter().collect(), Vec::new()),
            Some(node) => {
                let users = distinct(batch.iter().map(|m| m.user_id));
                let owners: Owners = sqlx::query_as::<_, (i64, Option<String>, i64)>(
                    "SELECT user_id, node_id, epoch FROM user_owners WHERE user_id = ANY($1) \
                     ORDER BY user_id FOR SHARE",
                )
                .bind(&users)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(u, n, e)| (u, (n, e)))
                .collect();
                split_fenced(batch, &owners, node)
            }
        };

        // Drop messages whose network is gone or belongs to someone else: a network
        // deleted while its messages were queued must not wedge the writer.
        let networks = distinct(batch.iter().map(|m| m.network_id));
        let owner: HashMap<NetworkId, UserId> =
            sqlx::query_as::<_, (i64, i64)>("SELECT id, user_id FROM networks WHERE id = ANY($1)")
                .bind(&networks)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let valid = on_own_networks(&batch, &owner);
        if valid.is_empty() {
            tx.commit().await?;
            return Ok(fenced);
        }

        // Buffers: one row per distinct buffer of the batch, in key order.
        let mut buffers: Vec<_> = latest_per_buffer(&valid).into_iter().collect();
        buffers.sort_unstable_by_key(|(b, _)| *b);
        let mut b_network = Vec::with_capacity(buffers.len());
        let mut b_key = Vec::with_capacity(buffers.len());
        let mut b_name = Vec::with_capacity(buffers.len());
        let mut b_kind = Vec::with_capacity(buffers.len());
        let mut b_latest = Vec::with_capacity(buffers.len());
        for ((network, key), (name, latest)) in &buffers {
            b_network.push(*network);
            b_key.push(*key);
            b_name.push(*name);
            b_kind.push(BufferKind::of(name).as_str());
            b_latest.push(*latest);
        }
        // A buffer row is written only when it is new or its `last_message_at` moves
        // forward by a step (`LAST_MESSAGE_AT_STEP_MS`): an update that changes nothing
        // still writes a row version. Rows the WHERE skips are locked all the same (so
        // not deleted before the commit) but not returned: their ids are looked up.
        let mut buffer_ids: HashMap<(NetworkId, Vec<u8>), i64> = sqlx::query_as::<_, (i64, i64, Vec<u8>)>(
            "INSERT INTO buffers (network_id, key, name, kind, last_message_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[], $4::text[], $5::bigint[]) \
             ON CONFLICT (network_id, key) DO UPDATE \
             SET last_message_at = EXCLUDED.last_message_at \
             WHERE buffers.last_message_at IS NULL \
                OR EXCLUDED.last_message_at >= buffers.last_message_at + $6 \
             RETURNING id, network_id, key",
        )
        .bind(&b_network)
        .bind(&b_key)
        .bind(&b_name)
        .bind(&b_kind)
        .bind(&b_latest)
        .bind(LAST_MESSAGE_AT_STEP_MS)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id, network, key)| ((network, key), id))
        .collect();
        if buffer_ids.len() < buffers.len() {
            let (m_network, m_key): (Vec<i64>, Vec<&[u8]>) = buffers
                .iter()
                .filter(|((n, k), _)| !buffer_ids.contains_key(&(*n, k.to_vec())))
                .map(|((n, k), _)| (*n, *k))
                .unzip();
            let found: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
                "SELECT b.id, b.network_id, b.key FROM buffers b \
                 JOIN UNNEST($1::bigint[], $2::bytea[]) AS w(network_id, key) \
                   ON b.network_id = w.network_id AND b.key = w.key",
            )
            .bind(&m_network)
            .bind(&m_key)
            .fetch_all(&mut *tx)
            .await?;
            buffer_ids.extend(found.into_iter().map(|(id, n, k)| ((n, k), id)));
        }

        // Bodies: insert the new ones, then look all of them up by content hash. The
        // lookup takes a key-share lock so retention cannot delete a body between here
        // and the commit; a body it deleted just before is inserted again.
        // Each distinct line is hashed once: a line delivered to N users is N messages
        // with byte-identical `raw`. New bodies get ids in the order of the batch (first
        // use), though they are inserted in hash order: search takes the newest ids as
        // the newest lines (`PostgresDb::search`), so ids must not be shuffled within a batch.
        let mut bodies: BTreeMap<[u8; 32], (Body, usize)> = BTreeMap::new();
        let mut hashed: HashMap<&[u8], [u8; 32]> = HashMap::new();
        let hashes: Vec<[u8; 32]> = valid
            .iter()
            .map(|m| {
                *hashed.entry(&m.raw[..]).or_insert_with(|| {
                    let h = body_hash(&m.raw);
                    let first = bodies.len();
                    bodies
                        .entry(h)
                        .or_insert_with(|| ((&m.raw[..], strip_nul(&m.text)), first));
                    h
                })
            })
            .collect();
        let mut body_ids: HashMap<Vec<u8>, i64> = HashMap::with_capacity(bodies.len());
        for _attempt in 0..3 {
            let missing: Vec<(&[u8; 32], &(Body, usize))> = bodies
                .iter()
                .filter(|(h, _)| !body_ids.contains_key(&h[..]))
                .collect();
            if missing.is_empty() {
                break;
            }
            // Ids for the missing bodies, handed out by first use (ids of lines that
            // turn out to exist already are skipped, as identity ids can be anyway).
            let mut fresh: Vec<i64> =
                sqlx::query_scalar("SELECT nextval('bodies_id_seq') FROM generate_series(1, $1)")
                    .bind(missing.len() as i64)
                    .fetch_all(&mut *tx)
                    .await?;
            fresh.sort_unstable();
            let mut by_use: Vec<usize> = (0..missing.len()).collect();
            by_use.sort_unstable_by_key(|&i| missing[i].1 .1);
            let mut id = vec![0i64; missing.len()];
            for (rank, &i) in by_use.iter().enumerate() {
                id[i] = fresh[rank];
            }
            let h: Vec<&[u8]> = missing.iter().map(|(h, _)| &h[..]).collect();
            let raw: Vec<&[u8]> = missing.iter().map(|(_, ((r, _), _))| *r).collect();
            let text: Vec<&str> = missing.iter().map(|(_, ((_, t), _))| t.as_ref()).collect();
            sqlx::query(
                "INSERT INTO bodies (id, hash, raw, text) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[], $4::text[]) \
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&id)
            .bind(&h)
            .bind(&raw)
            .bind(&text)
            .execute(&mut *tx)
            .await?;
            let found: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT id, hash FROM bodies WHERE hash = ANY($1) ORDER BY hash FOR KEY SHARE",
            )
            .bind(&h)
            .fetch_all(&mut *tx)
            .await?;
            body_ids.extend(found.into_iter().map(|(id, hash)| (hash, id)));
        }

        // Shared lines as events (`shared.rs`), the others as thin rows.
        let mut shared: Vec<SharedRow> = Vec::new();
        for (m, h) in valid.iter().zip(&hashes) {
            if m.stream.is_none() {
                continue;
            }
            let Some(body_id) = body_ids.get(&h[..]) else {
                return Err(StoreError::NotFound(
                    "message body (deleted concurrently)".into(),
                ));
            };
            shared.push(SharedRow {
                m,
                buffer_id: buffer_ids[&(m.network_id, m.buffer_key.clone())],
                body_id: *body_id,
            });
        }
        let learnt = insert_events(&mut Conn::Postgres(&mut tx), &self.shared, &shared).await?;

        // Thin rows.
        let n = valid.len();
        let mut user = Vec::with_capacity(n);
        let mut seq = Vec::with_capacity(n);
        let mut network = Vec::with_capacity(n);
        let mut buffer = Vec::with_capacity(n);
        let mut time = Vec::with_capacity(n);
        let mut sender: Vec<Cow<str>> = Vec::with_capacity(n);
        let mut command: Vec<Cow<str>> = Vec::with_capacity(n);
        let mut msgid: Vec<Option<Cow<str>>> = Vec::with_capacity(n);
        let mut body = Vec::with_capacity(n);
        let mut epoch = Vec::with_capacity(n);
        for (m, h) in valid.iter().zip(&hashes) {
            if m.stream.is_some() {
                continue;
            }
            let Some(body_id) = body_ids.get(&h[..]) else {
                return Err(StoreError::NotFound(
                    "message body (deleted concurrently)".into(),
                ));
            };
            user.push(m.user_id);
            seq.push(m.seq);
            network.push(m.network_id);
            buffer.push(buffer_ids[&(m.network_id, m.buffer_key.clone())]);
            time.push(to_ms(m.time));
            sender.push(strip_nul(&m.sender));
            command.push(strip_nul(&m.command));
            msgid.push(m.msgid.as_deref().map(strip_nul));
            body.push(*body_id);
            epoch.push(m.epoch);
        }
        // `network_id` is read by nothing of this Ferry (a message's network is its
        // buffer's) but still written for nodes of the previous version, which filter
        // on it, until a later migration drops it (0016 is the expand step).
        sqlx::query(
            "INSERT INTO messages (user_id, seq, network_id, buffer_id, time, sender, command, msgid, body_id, epoch) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
             $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[]) \
             ON CONFLICT (user_id, seq) DO NOTHING",
        )
        .bind(&user)
        .bind(&seq)
        .bind(&network)
        .bind(&buffer)
        .bind(&time)
        .bind(sender.iter().map(|s| s.as_ref()).collect::<Vec<&str>>())
        .bind(command.iter().map(|s| s.as_ref()).collect::<Vec<&str>>())
        .bind(msgid.iter().map(|s| s.as_deref()).collect::<Vec<Option<&str>>>())
        .bind(&body)
        .bind(&epoch)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.shared.apply(learnt);
        Ok(fenced)
    }

    /// Full-text search, newest first: the newest matching bodies (by id, which
    /// grows as lines arrive) joined with this user's messages. See the SQLite
    /// backend for why the planner's own choice (walk the user's messages and test
    /// each body) is slow for rare words.
    ///
    /// Bodies are searched in a window of the newest ids first, widened (by what the
    /// last window yielded) until it holds enough hits: the GIN bitmap of a middling
    /// word has tens of thousands of rows at 10 million bodies, and fetching each
    /// from the heap only to keep the newest few hundred was most of the time. With
    /// the window the planner ANDs that bitmap with the BRIN index on id (migration
    /// 0007) or, for common words, walks the primary key backwards, so heap visits
    /// stay near the number of hits wanted. Each round is planned for its own values
    /// (an unnamed statement), since the right plan depends on how common the words
    /// are and how wide the window is. `docs/benchmarks.md` §4 has the plans.
    async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let text = strip_nul(&q.text).into_owned();
        // The newest body id handed out (possibly not committed yet: harmless). The
        // sequence answers at once, where max(id) walks back over a running batch.
        let top: i64 = sqlx::query_scalar("SELECT last_value FROM bodies_id_seq")
            .fetch_one(&self.pool)
            .await?;
        let mut k = (q.limit * 4).max(200);
        let mut window = SEARCH_FIRST_WINDOW;
        loop {
            let floor = top.saturating_sub(window);
            let whole = floor <= 0;
            let mut qb: QueryBuilder<Postgres> =
                QueryBuilder::new("SELECT id FROM bodies WHERE tsv @@ plainto_tsquery('simple', ");
            qb.push_bind(&text).push(")");
            if !whole {
                qb.push(" AND id > ").push_bind(floor);
            }
            qb.push(" ORDER BY id DESC LIMIT ").push_bind(k);
            let ids: Vec<i64> = qb
                .build_query_scalar()
                .persistent(false)
                .fetch_all(&self.pool)
                .await?;
            let hits = ids.len() as i64;
            if hits < q.limit && !whole {
                // Too few hits for a page even before filters: widen without joining.
                // (Should this window's rows fill a page anyway, a body delivered to
                // the user twice, the wider window returns them all the same.)
                window = window.saturating_mul(search_growth(q.limit, hits));
                continue;
            }
            let rows = if ids.is_empty() {
                Vec::new()
            } else {
                self.search_rows(q, &ids).await?
            };
            if rows.len() as i64 >= q.limit {
                return Ok(rows);
            }
            if hits >= k {
                // The window holds more hits than we took: take more of them.
                k = k.saturating_mul(8);
            } else if whole {
                // Every matching body was looked at.
                return Ok(rows);
            } else {
                // Filters left too few rows.
                let grow = search_growth(q.limit, rows.len() as i64);
                window = window.saturating_mul(grow);
            }
        }
    }

    /// Nothing to check: the GIN index is maintained by PostgreSQL itself.
    #[cfg(test)]
    async fn check_search_index(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// How many of the newest body ids a search looks at first (see `PostgresDb::search`).
/// Tiny under test, so the store tests' few bodies already take several windows.
const SEARCH_FIRST_WINDOW: i64 = if cfg!(test) { 4 } else { 1 << 16 };

/// How much wider the next search window is, when this one yielded `found` of the
/// `limit` rows wanted: enough for them, assuming hits are spread evenly, with a
/// margin so one more round usually suffices. A window is cheap to widen (a BRIN
/// scan), but every hit in it is fetched: at 10 million bodies a cap of 64 instead of
/// 16 doubled the p95 of rare words (a window guessed from one or two hits overshoots).
fn search_growth(limit: i64, found: i64) -> i64 {
    if found <= 0 {
        16
    } else {
        ((limit * 3 / 2 + found - 1) / found).clamp(2, 16)
    }
}

/// PostgreSQL TEXT rejects NUL; drop them.
fn strip_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
    } else {
        Cow::Borrowed(s)
    }
}
