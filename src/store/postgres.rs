//! The PostgreSQL backend: shared by the nodes of a cluster.
//!
//! PostgreSQL TEXT cannot hold NUL characters, so they are stripped from message text
//! (the raw line, a BYTEA, keeps them).

mod api;
mod cluster;
mod limits;
mod migrate;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::types::*;
use super::{body_hash, expect_one, not_found_on_fk, StoreError};

/// A buffer of a batch: (network, key).
type BufferRef<'a> = (NetworkId, &'a [u8]);

/// The sqlx database of this backend, for the SQL shared with SQLite
/// (`shared/backlog.rs`).
type Dialect = Postgres;

/// A body of a batch: (raw, text without NUL).
type Body<'a> = (&'a [u8], Cow<'a, str>);

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

pub(super) struct Db {
    pool: PgPool,
}

impl Db {
    pub(super) async fn open(url: &str) -> Result<Db, StoreError> {
        // A node paused in the middle of a transaction (SIGSTOP) must not hold the
        // owner rows it locked (FOR SHARE) for ever: the server ends such a transaction.
        let opts = PgConnectOptions::from_str(url)?
            .options([("idle_in_transaction_session_timeout", "5s")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let db = Db { pool };
        db.check_not_too_new().await?;
        // The migrator holds an advisory lock, so nodes starting together take turns.
        MIGRATOR.run(&db.pool).await?;
        Ok(db)
    }

    async fn check_not_too_new(&self) -> Result<(), StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(());
        }
        let found = self.schema_version().await?;
        let supported = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn optimize(&self) -> Result<(), StoreError> {
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
    pub(super) async fn release_memory(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub(super) async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    // ---- users ----

    pub(super) async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User, StoreError> {
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (name, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4) RETURNING *",
        )
        .bind(name)
        .bind(password_hash)
        .bind(is_admin)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::conflict_on(|| format!("user {name:?}")))?;
        Ok(row.into())
    }

    pub(super) async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as("SELECT * FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows: Vec<UserRow> = sqlx::query_as("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn delete_user(&self, id: UserId) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        expect_one(r.rows_affected(), || format!("user {id}"))
    }

    pub(super) async fn set_password(
        &self,
        id: UserId,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(id)
            .bind(password_hash)
            .execute(&self.pool)
            .await?;
        expect_one(r.rows_affected(), || format!("user {id}"))
    }

    pub(super) async fn set_retention(&self, id: UserId, r: Retention) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE users SET retention_max_age_days = $2, retention_max_messages = $3 WHERE id = $1")
            .bind(id)
            .bind(r.max_age_days)
            .bind(r.max_messages)
            .execute(&self.pool)
            .await?;
        expect_one(r.rows_affected(), || format!("user {id}"))
    }

    // ---- networks ----

    pub(super) async fn create_network(
        &self,
        user: UserId,
        n: &NewNetwork,
    ) -> Result<Network, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (mech, sasl_user, sasl_pass, sasl_cert) = sasl_columns(&n.sasl);
        let row: NetworkRow = sqlx::query_as(
            "INSERT INTO networks (user_id, name, addr, tls, tls_verify, nick, username, realname, \
             sasl_mechanism, sasl_username, sasl_password, sasl_cert, source_ip, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING *",
        )
        .bind(user)
        .bind(&n.name)
        .bind(&n.addr)
        .bind(n.tls)
        .bind(n.tls_verify.to_db())
        .bind(&n.nick)
        .bind(&n.username)
        .bind(&n.realname)
        .bind(mech)
        .bind(sasl_user)
        .bind(sasl_pass)
        .bind(sasl_cert)
        .bind(&n.source_ip)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound(format!("user {user}")),
            _ => StoreError::conflict_on(|| format!("network {:?}", n.name))(e),
        })?;
        for (name, key, chan_key) in &n.channels {
            upsert_channel(&mut tx, row.id, name, key, true, chan_key.as_deref()).await?;
        }
        tx.commit().await?;
        Ok(row.into())
    }

    pub(super) async fn networks(&self, user: UserId) -> Result<Vec<Network>, StoreError> {
        let rows: Vec<NetworkRow> =
            sqlx::query_as("SELECT * FROM networks WHERE user_id = $1 ORDER BY name")
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn network(&self, id: NetworkId) -> Result<Option<Network>, StoreError> {
        let row: Option<NetworkRow> = sqlx::query_as("SELECT * FROM networks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn network_by_name(
        &self,
        user: UserId,
        name: &str,
    ) -> Result<Option<Network>, StoreError> {
        let row: Option<NetworkRow> =
            sqlx::query_as("SELECT * FROM networks WHERE user_id = $1 AND name = $2")
                .bind(user)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Into::into))
    }

    pub(super) async fn delete_network(&self, id: NetworkId) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM networks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        expect_one(r.rows_affected(), || format!("network {id}"))
    }

    pub(super) async fn set_network_nick(
        &self,
        id: NetworkId,
        nick: &str,
    ) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE networks SET nick = $2 WHERE id = $1")
            .bind(id)
            .bind(nick)
            .execute(&self.pool)
            .await?;
        expect_one(r.rows_affected(), || format!("network {id}"))
    }

    // ---- buffers ----

    pub(super) async fn buffers(&self, network: NetworkId) -> Result<Vec<Buffer>, StoreError> {
        let rows: Vec<BufferRow> =
            sqlx::query_as("SELECT * FROM buffers WHERE network_id = $1 ORDER BY key")
                .bind(network)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn set_channel(
        &self,
        network: NetworkId,
        name: &[u8],
        key: &[u8],
        joined: bool,
        chan_key: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        upsert_channel(&mut conn, network, name, key, joined, chan_key).await
    }

    pub(super) async fn set_read_marker(
        &self,
        network: NetworkId,
        key: &[u8],
        seq: Seq,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO buffers (network_id, key, name, kind, read_marker) VALUES ($1, $2, $2, $3, $4) \
             ON CONFLICT (network_id, key) DO UPDATE SET read_marker = excluded.read_marker \
             WHERE excluded.read_marker > buffers.read_marker",
        )
        .bind(network)
        .bind(key)
        .bind(BufferKind::of(key).as_str())
        .bind(seq)
        .execute(&self.pool)
        .await
        .map_err(not_found_on_fk(|| format!("network {network}")))?;
        Ok(())
    }

    // ---- backlog ----

    pub(super) async fn last_seq(&self, user: UserId) -> Result<Seq, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM messages WHERE user_id = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    pub(super) async fn msgids_known(
        &self,
        user: UserId,
        network: i64,
        msgids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut known = Vec::new();
        for id in msgids {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages WHERE user_id = $1 AND network_id = $2 AND msgid = $3",
            )
            .bind(user)
            .bind(network)
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
            if n > 0 {
                known.push(id.clone());
            }
        }
        Ok(known)
    }

    pub(super) async fn insert_messages(
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
        let mut fenced: Vec<UserId> = Vec::new();
        let batch: Vec<&NewMessage> = match fence_node {
            None => batch.iter().collect(),
            Some(node) => {
                let mut users: Vec<i64> = batch.iter().map(|m| m.user_id).collect();
                users.sort_unstable();
                users.dedup();
                let owners: HashMap<UserId, (Option<String>, i64)> =
                    sqlx::query_as::<_, (i64, Option<String>, i64)>(
                        "SELECT user_id, node_id, epoch FROM user_owners WHERE user_id = ANY($1) \
                         ORDER BY user_id FOR SHARE",
                    )
                    .bind(&users)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|(u, n, e)| (u, (n, e)))
                    .collect();
                let ok = |m: &NewMessage| {
                    owners
                        .get(&m.user_id)
                        .is_some_and(|(n, e)| n.as_deref() == Some(node) && *e == m.epoch)
                };
                let (keep, drop): (Vec<&NewMessage>, Vec<&NewMessage>) =
                    batch.iter().partition(|m| ok(m));
                fenced = drop.iter().map(|m| m.user_id).collect();
                fenced.sort_unstable();
                fenced.dedup();
                keep
            }
        };

        // Drop messages whose network is gone or belongs to someone else: a network
        // deleted while its messages were queued must not wedge the writer.
        let mut networks: Vec<i64> = batch.iter().map(|m| m.network_id).collect();
        networks.sort_unstable();
        networks.dedup();
        let owner: HashMap<NetworkId, UserId> =
            sqlx::query_as::<_, (i64, i64)>("SELECT id, user_id FROM networks WHERE id = ANY($1)")
                .bind(&networks)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let valid: Vec<&NewMessage> = batch
            .iter()
            .copied()
            .filter(|m| owner.get(&m.network_id) == Some(&m.user_id))
            .collect();
        if valid.is_empty() {
            tx.commit().await?;
            return Ok(fenced);
        }

        // Buffers: one row per distinct buffer of the batch.
        let mut buffers: BTreeMap<BufferRef, (&[u8], i64)> = BTreeMap::new();
        for m in &valid {
            let t = to_ms(m.time);
            let e = buffers
                .entry((m.network_id, &m.buffer_key[..]))
                .or_insert((&m.buffer[..], t));
            e.1 = e.1.max(t);
        }
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
        let buffer_ids: HashMap<(NetworkId, Vec<u8>), i64> = sqlx::query_as::<_, (i64, i64, Vec<u8>)>(
            "INSERT INTO buffers (network_id, key, name, kind, last_message_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[], $4::text[], $5::bigint[]) \
             ON CONFLICT (network_id, key) DO UPDATE \
             SET last_message_at = GREATEST(buffers.last_message_at, EXCLUDED.last_message_at) \
             RETURNING id, network_id, key",
        )
        .bind(&b_network)
        .bind(&b_key)
        .bind(&b_name)
        .bind(&b_kind)
        .bind(&b_latest)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id, network, key)| ((network, key), id))
        .collect();

        // Bodies: insert the new ones, then look all of them up by content hash. The
        // lookup takes a key-share lock so retention cannot delete a body between here
        // and the commit; a body it deleted just before is inserted again.
        // Each distinct line is hashed once: a line delivered to N users is N messages
        // with byte-identical `raw`. New bodies get ids in the order of the batch (first
        // use), though they are inserted in hash order: search takes the newest ids as
        // the newest lines (`Db::search`), so ids must not be shuffled within a batch.
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
    pub(super) async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError> {
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
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM bodies bo \
             JOIN messages m ON m.body_id = bo.id JOIN buffers b ON b.id = m.buffer_id \
             WHERE bo.id = ANY("
        ));
        qb.push_bind(ids)
            .push(") AND m.user_id = ")
            .push_bind(q.user);
        let sender = q.sender.as_deref().map(strip_nul);
        push_search_filters(&mut qb, q, sender.as_deref());
        qb.push(" ORDER BY m.seq DESC LIMIT ").push_bind(q.limit);
        Ok(qb.build_query_as().fetch_all(&self.pool).await?)
    }

    #[cfg(test)]
    pub(super) async fn body_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM bodies")
            .fetch_one(&self.pool)
            .await?)
    }
}

async fn upsert_channel(
    conn: &mut sqlx::PgConnection,
    network: NetworkId,
    name: &[u8],
    key: &[u8],
    joined: bool,
    chan_key: Option<&[u8]>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO buffers (network_id, key, name, kind, joined, chan_key) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (network_id, key) DO UPDATE \
         SET name = excluded.name, joined = excluded.joined, chan_key = excluded.chan_key",
    )
    .bind(network)
    .bind(key)
    .bind(name)
    .bind(BufferKind::of(name).as_str())
    .bind(joined)
    .bind(chan_key)
    .execute(conn)
    .await
    .map_err(not_found_on_fk(|| format!("network {network}")))?;
    Ok(())
}

/// How many of the newest body ids a search looks at first (see `Db::search`).
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

include!("shared/backlog.rs");
