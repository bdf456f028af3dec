//! The SQLite backend: one file, WAL mode; the default for a single node.

mod api;
mod cluster;
mod limits;
mod migrate;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::types::*;
use super::{body_hash, expect_one, fts5_query, not_found_on_fk, StoreError};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// The sqlx database of this backend, for the SQL shared with PostgreSQL
/// (`shared/backlog.rs`).
type Dialect = Sqlite;

/// A buffer of a batch: (network, key).
type BufferRef<'a> = (NetworkId, &'a [u8]);

/// Rows per multi-row INSERT into `messages` (10 parameters each; SQLite allows 32766).
const MESSAGE_CHUNK: usize = 1000;
/// Page cache of the backlog writer's connection, in KiB. It holds the pages every
/// commit touches (each active user's newest leaf of the message indexes); with
/// SQLite's default (2 MiB) a batch for a few hundred users re-reads them from the OS.
const WRITER_CACHE_KIB: u32 = 16 * 1024;
/// WAL pages before a checkpoint (SQLite's default is 1,000).
const WAL_AUTOCHECKPOINT: u32 = 10_000;
/// How long an unused pooled connection stays open.
const IDLE_CONNECTION: Duration = Duration::from_secs(30);
/// Keys per `IN (…)` lookup and rows per multi-row upsert of buffers and bodies.
const LOOKUP_CHUNK: usize = 500;

/// The distinct values of `it`, sorted.
fn distinct(it: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = it.collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub(super) struct Db {
    pool: SqlitePool,
    /// The one connection that writes backlog (`insert_messages`). Its page cache
    /// stays warm between batches: SQLite drops a connection's cache whenever another
    /// connection wrote, so batches spread over the pool re-read their pages each time.
    writer: SqlitePool,
}

impl Db {
    pub(super) async fn open(path: &str) -> Result<Db, StoreError> {
        if path.is_empty() {
            return Err(StoreError::BadUrl(path.to_owned()));
        }
        if let Some(dir) = Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // Checkpoint every ~40 MB of WAL rather than 4 MB: the backlog writer's hot
            // pages (each user's newest leaf of each index) are rewritten by every
            // commit, and a checkpoint copies each page once however often it changed.
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // Each connection keeps its own page cache (up to 2 MiB): the ones a burst
            // of queries opened are closed again once idle.
            .idle_timeout(IDLE_CONNECTION)
            .connect_with(opts.clone())
            .await?;
        // The backlog writer's own connection (see `Db::writer`). Foreign keys are not
        // checked on it: `insert_messages` validates every parent row (network, and
        // through it the user; buffers and bodies it upserts itself) in the same
        // transaction, and the per-row checks cost four index seeks plus a statement
        // journal per multi-row INSERT.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                opts.foreign_keys(false)
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    .pragma("temp_store", "memory"),
            )
            .await?;
        let db = Db { pool, writer };
        db.check_not_too_new().await?;
        MIGRATOR.run(&db.pool).await?;
        Ok(db)
    }

    async fn check_not_too_new(&self) -> Result<(), StoreError> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
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
        self.writer.close().await;
        self.pool.close().await;
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn optimize(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA optimize").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn release_memory(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA shrink_memory")
            .execute(&self.writer)
            .await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        // A few statements per batch whatever its size (each statement is a round trip
        // to sqlx's worker thread): lookups with `IN (…)` lists, multi-row upserts.
        // IMMEDIATE: take the write lock up front, so reading then writing cannot fail
        // with SQLITE_BUSY halfway (busy_timeout does not cover lock upgrades). It also
        // makes the fencing check below and the inserts one atomic step.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;

        // Fencing: keep only messages whose (user, node, epoch) still matches the owner row.
        let mut fenced: Vec<UserId> = Vec::new();
        let batch: Vec<&NewMessage> = match fence_node {
            None => batch.iter().collect(),
            Some(node) => {
                let users = distinct(batch.iter().map(|m| m.user_id));
                let mut owners: HashMap<UserId, (Option<String>, i64)> =
                    HashMap::with_capacity(users.len());
                for chunk in users.chunks(LOOKUP_CHUNK) {
                    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                        "SELECT user_id, node_id, epoch FROM user_owners WHERE user_id IN ",
                    );
                    qb.push_tuples(chunk, |mut b, u| {
                        b.push_bind(*u);
                    });
                    let rows: Vec<(i64, Option<String>, i64)> =
                        qb.build_query_as().fetch_all(&mut *tx).await?;
                    owners.extend(rows.into_iter().map(|(u, n, e)| (u, (n, e))));
                }
                let (keep, drop): (Vec<&NewMessage>, Vec<&NewMessage>) =
                    batch.iter().partition(|m| {
                        owners
                            .get(&m.user_id)
                            .is_some_and(|(n, e)| n.as_deref() == Some(node) && *e == m.epoch)
                    });
                fenced = distinct(drop.iter().map(|m| m.user_id));
                keep
            }
        };

        // Drop messages whose network is gone or belongs to someone else: a network
        // deleted while its messages were queued must not wedge the writer.
        let networks = distinct(batch.iter().map(|m| m.network_id));
        let mut owner: HashMap<NetworkId, UserId> = HashMap::with_capacity(networks.len());
        for chunk in networks.chunks(LOOKUP_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT id, user_id FROM networks WHERE id IN ");
            qb.push_tuples(chunk, |mut b, n| {
                b.push_bind(*n);
            });
            let rows: Vec<(i64, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            owner.extend(rows);
        }
        let valid: Vec<&NewMessage> = batch
            .iter()
            .copied()
            .filter(|m| owner.get(&m.network_id) == Some(&m.user_id))
            .collect();
        if valid.is_empty() {
            tx.commit().await?;
            return Ok(fenced);
        }

        // Buffers: one multi-row upsert per chunk of distinct buffers in the batch.
        let mut buffers: HashMap<BufferRef, (&[u8], i64)> = HashMap::new();
        for m in &valid {
            let t = to_ms(m.time);
            let e = buffers
                .entry((m.network_id, &m.buffer_key[..]))
                .or_insert((&m.buffer[..], t));
            e.1 = e.1.max(t);
        }
        let buffers: Vec<(BufferRef, (&[u8], i64))> = buffers.into_iter().collect();
        let buffer_index: HashMap<BufferRef, usize> = buffers
            .iter()
            .enumerate()
            .map(|(i, (b, _))| (*b, i))
            .collect();
        let mut buffer_ids: Vec<i64> = vec![0; buffers.len()];
        for chunk in buffers.chunks(LOOKUP_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO buffers (network_id, key, name, kind, last_message_at) ",
            );
            qb.push_values(chunk, |mut b, ((network, key), (name, latest))| {
                b.push_bind(*network)
                    .push_bind(*key)
                    .push_bind(*name)
                    .push_bind(BufferKind::of(name).as_str())
                    .push_bind(*latest);
            });
            qb.push(
                " ON CONFLICT (network_id, key) DO UPDATE \
                 SET last_message_at = max(coalesce(buffers.last_message_at, 0), excluded.last_message_at) \
                 RETURNING network_id, key, id",
            );
            let rows: Vec<(i64, Vec<u8>, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            for (network, key, id) in rows {
                if let Some(&i) = buffer_index.get(&(network, &key[..])) {
                    buffer_ids[i] = id;
                }
            }
        }

        // Bodies: each distinct line of the batch hashed once, looked up by content
        // hash, the missing ones inserted in order of arrival (body ids grow as lines
        // arrive, which search relies on).
        let mut lines: HashMap<&[u8], usize> = HashMap::new();
        let mut distinct_bodies: Vec<([u8; 32], &NewMessage)> = Vec::new();
        let body_of: Vec<usize> = valid
            .iter()
            .map(|m| {
                *lines.entry(&m.raw[..]).or_insert_with(|| {
                    distinct_bodies.push((body_hash(&m.raw), m));
                    distinct_bodies.len() - 1
                })
            })
            .collect();
        let mut body_ids: HashMap<[u8; 32], i64> = HashMap::with_capacity(distinct_bodies.len());
        for chunk in distinct_bodies.chunks(LOOKUP_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT hash, id FROM bodies WHERE hash IN ");
            qb.push_tuples(chunk, |mut b, (h, _)| {
                b.push_bind(&h[..]);
            });
            let rows: Vec<(Vec<u8>, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            for (h, id) in rows {
                if let Ok(h) = <[u8; 32]>::try_from(&h[..]) {
                    body_ids.insert(h, id);
                }
            }
        }
        let missing: Vec<&([u8; 32], &NewMessage)> = distinct_bodies
            .iter()
            .filter(|(h, _)| !body_ids.contains_key(h))
            .collect();
        for chunk in missing.chunks(LOOKUP_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO bodies (hash, raw, text) ");
            qb.push_values(chunk, |mut b, (h, m)| {
                b.push_bind(&h[..]).push_bind(&m.raw[..]).push_bind(&m.text);
            });
            qb.push(" RETURNING hash, id");
            let rows: Vec<(Vec<u8>, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            for (h, id) in rows {
                if let Ok(h) = <[u8; 32]>::try_from(&h[..]) {
                    body_ids.insert(h, id);
                }
            }
        }

        // Thin rows, many per statement.
        let rows: Vec<(&NewMessage, i64, i64)> = valid
            .iter()
            .zip(&body_of)
            .map(|(m, &b)| {
                let buffer = buffer_index[&(m.network_id, &m.buffer_key[..])];
                (*m, buffer_ids[buffer], body_ids[&distinct_bodies[b].0])
            })
            .collect();
        for chunk in rows.chunks(MESSAGE_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                // OR IGNORE: a message already stored (same user and seq) is skipped, so
                // a retried batch is safe. (Not `ON CONFLICT DO NOTHING`: with it, NOT
                // NULL still aborts, which makes SQLite keep a statement journal.)
                "INSERT OR IGNORE INTO messages (user_id, seq, network_id, buffer_id, time, sender, command, msgid, body_id, epoch) ",
            );
            qb.push_values(chunk, |mut b, (m, buffer_id, body_id)| {
                b.push_bind(m.user_id)
                    .push_bind(m.seq)
                    .push_bind(m.network_id)
                    .push_bind(*buffer_id)
                    .push_bind(to_ms(m.time))
                    .push_bind(&m.sender)
                    .push_bind(&m.command)
                    .push_bind(&m.msgid)
                    .push_bind(*body_id)
                    .push_bind(m.epoch);
            });

            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(fenced)
    }

    /// Full-text search, newest first.
    ///
    /// Bodies are shared by users and their ids grow as lines arrive, so the
    /// newest matching bodies are found first through the FTS index (`ORDER BY
    /// rowid DESC LIMIT k`) and joined with this user's messages. When the
    /// filters leave fewer than `limit` rows and more matches exist, `k` grows
    /// eightfold and the query runs again. Letting SQLite pick the plan instead
    /// scans the user's messages newest first and probes the FTS index per
    /// row: seconds for a rare word at 200,000 messages (measured), where this
    /// takes about a millisecond. The cost of the shortcut: a byte-identical
    /// repeat of a line first seen long ago ranks among the newest only if its
    /// body is among the `k` newest matching bodies. `CROSS JOIN` makes the
    /// hits the outer loop: SQLite would otherwise walk the user's messages in
    /// `seq` order to avoid a sort, which is slowest exactly for rare words.
    pub(super) async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(fts) = fts5_query(&q.text) else {
            return Ok(Vec::new());
        };
        let mut k = (q.limit * 4).max(200);
        loop {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "WITH hits AS MATERIALIZED (SELECT rowid AS id FROM bodies_fts WHERE bodies_fts MATCH ",
            );
            qb.push_bind(&fts);
            qb.push(" ORDER BY rowid DESC LIMIT ").push_bind(k);
            qb.push(format!(
                ") SELECT {MESSAGE_COLUMNS} FROM hits \
                 CROSS JOIN messages m ON m.body_id = hits.id \
                 JOIN buffers b ON b.id = m.buffer_id JOIN bodies bo ON bo.id = m.body_id \
                 WHERE m.user_id = "
            ));
            qb.push_bind(q.user);
            push_search_filters(&mut qb, q, q.sender.as_deref());
            qb.push(" ORDER BY m.seq DESC LIMIT ").push_bind(q.limit);
            let rows: Vec<MessageRow> = qb.build_query_as().fetch_all(&self.pool).await?;
            if rows.len() as i64 >= q.limit {
                return Ok(rows.into_iter().map(Into::into).collect());
            }
            let hits: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT rowid FROM bodies_fts WHERE bodies_fts MATCH $1 \
                 ORDER BY rowid DESC LIMIT $2)",
            )
            .bind(&fts)
            .bind(k)
            .fetch_one(&self.pool)
            .await?;
            if hits < k {
                return Ok(rows.into_iter().map(Into::into).collect());
            }
            k = k.saturating_mul(8);
        }
    }

    #[cfg(test)]
    pub(super) async fn body_count(&self) -> Result<i64, StoreError> {
        sqlx::query("INSERT INTO bodies_fts (bodies_fts) VALUES ('integrity-check')")
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM bodies")
            .fetch_one(&self.pool)
            .await?)
    }
}

async fn upsert_channel(
    conn: &mut sqlx::SqliteConnection,
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

include!("shared/backlog.rs");
