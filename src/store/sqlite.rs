//! The SQLite backend: one file, WAL mode; the default for a single node.
//!
//! What is SQLite's own: connection setup (pragmas, a separate connection for the
//! backlog writer), `BEGIN IMMEDIATE` for writes, the batch insert (`IN (…)` lookups
//! and multi-row upserts in chunks, under SQLite's parameter limit) and search through
//! the FTS5 index. Everything else is the shared SQL of the `Store` methods.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

use super::backend::Backend;
use super::backlog::{
    distinct, latest_per_buffer, merge_page, on_own_networks, push_search_filters, split_fenced,
    BufferRef, Owners, LINE_SOURCES,
};
use super::shared::{insert_events, Conn, SharedCache, SharedRow};
use super::sql::{sized_chunks, Sql};
use super::types::*;
use super::{body_hash, StoreError};

/// A row of a batch with its buffer and body ids.
type Row<'m> = (&'m NewMessage, i64, i64);

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Rows per multi-row INSERT into `messages` (9 parameters each; SQLite allows 32766).
/// Smaller ones in powers of two ([`sized_chunks`]).
const MESSAGE_CHUNK: usize = 1024;
/// Page cache of the backlog writer's connection, in KiB. It holds the pages every
/// commit touches (each active user's newest leaf of the message indexes); with
/// SQLite's default (2 MiB) a batch for a few hundred users re-reads them from the OS.
const WRITER_CACHE_KIB: u32 = 16 * 1024;
/// WAL pages before a checkpoint (SQLite's default is 1,000).
const WAL_AUTOCHECKPOINT: u32 = 10_000;
/// How long an unused pooled connection stays open.
const IDLE_CONNECTION: Duration = Duration::from_secs(30);
/// Keys per `IN (…)` lookup and rows per multi-row upsert of buffers and bodies.
const LOOKUP_CHUNK: usize = 512;

pub(super) struct SqliteDb {
    pool: SqlitePool,
    /// The one connection that writes backlog (`insert_messages`). Its page cache
    /// stays warm between batches: SQLite drops a connection's cache whenever another
    /// connection wrote, so batches spread over the pool re-read their pages each time.
    writer: SqlitePool,
    /// Where the database is, to open fresh connections after a migration.
    path: String,
    /// Ids of shared streams and audiences (`shared.rs`).
    pub(super) shared: SharedCache,
}

impl SqliteDb {
    /// Opens (creating the file and its directory if missing) the database at `path`.
    pub(super) async fn connect(path: &str) -> Result<SqliteDb, StoreError> {
        if path.is_empty() {
            return Err(StoreError::BadUrl(path.to_owned()));
        }
        private_files(Path::new(path)).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
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
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT.to_string())
            // Deleted content is zeroed where that costs no extra I/O, so a rewritten
            // secret (`Store::seal_secrets`) leaves no old copy in the page.
            .pragma("secure_delete", "fast");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // Each connection keeps its own page cache (up to 2 MiB): the ones a burst
            // of queries opened are closed again once idle.
            .idle_timeout(IDLE_CONNECTION)
            .connect_with(opts.clone())
            .await?;
        // The backlog writer's own connection (see `SqliteDb::writer`). Foreign keys
        // are not checked on it: `insert_messages` validates every parent row (network,
        // and through it the user; buffers and bodies it upserts itself) in the same
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
        // SQLite creates `-wal` and `-shm` with the database file's mode; an older
        // Ferry's wider ones are tightened here.
        for suffix in ["-wal", "-shm"] {
            let side = format!("{path}{suffix}");
            if Path::new(&side).exists() {
                crate::secrets::tighten(Path::new(&side), 0o600)
                    .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
        }
        Ok(SqliteDb {
            pool,
            writer,
            path: path.to_owned(),
            shared: SharedCache::default(),
        })
    }

    /// Replaces every connection with a fresh one, after migrations changed the
    /// schema. A connection that read the old schema prepares a `SELECT *` against
    /// it; SQLite re-prepares the statement when it runs, but sqlx keeps the column
    /// list of the first prepare, and a row wider than that list panics its worker
    /// (`index out of bounds` in sqlx-sqlite's `row.rs`; seen on upgrade tests
    /// under load). Connections opened after the migrations never see the old schema.
    pub(super) async fn fresh_connections(&mut self) -> Result<(), StoreError> {
        let fresh = SqliteDb::connect(&self.path).await?;
        let old = std::mem::replace(self, fresh);
        old.pool.close().await;
        old.writer.close().await;
        Ok(())
    }
}

/// The database's directory exists (created 0700 when missing; a wider existing one
/// is only warned about: it may be shared) and the database file is 0600 (created so
/// before SQLite opens it, which gives its `-wal` and `-shm` the same mode; a wider
/// one is tightened with a warning).
fn private_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format_args!("{mode:o}"),
                    "the database's directory is open to other users (0700 advised)"
                );
            }
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            crate::secrets::tighten(path, 0o600)
        }
        Err(e) => Err(e),
    }
}

impl Backend for SqliteDb {
    type Db = Sqlite;

    const NAME: &'static str = "sqlite";

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    /// IMMEDIATE: takes the write lock up front, so reading then writing cannot fail
    /// with SQLITE_BUSY halfway (busy_timeout does not cover lock upgrades).
    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    async fn optimize(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA optimize").execute(&self.pool).await?;
        Ok(())
    }

    async fn release_memory(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA shrink_memory")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn insert_messages(
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
        let (batch, fenced) = match fence_node {
            None => (batch.iter().collect(), Vec::new()),
            Some(node) => {
                let users = distinct(batch.iter().map(|m| m.user_id));
                let mut owners = Owners::with_capacity(users.len());
                for chunk in sized_chunks(&users, LOOKUP_CHUNK) {
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
                split_fenced(batch, &owners, node)
            }
        };

        // Drop messages whose network is gone or belongs to someone else: a network
        // deleted while its messages were queued must not wedge the writer.
        let networks = distinct(batch.iter().map(|m| m.network_id));
        let mut owner: HashMap<NetworkId, UserId> = HashMap::with_capacity(networks.len());
        for chunk in sized_chunks(&networks, LOOKUP_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT id, user_id FROM networks WHERE id IN ");
            qb.push_tuples(chunk, |mut b, n| {
                b.push_bind(*n);
            });
            let rows: Vec<(i64, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            owner.extend(rows);
        }
        let valid = on_own_networks(&batch, &owner);
        if valid.is_empty() {
            tx.commit().await?;
            return Ok(fenced);
        }

        // Buffers: one multi-row upsert per chunk of distinct buffers in the batch.
        let buffers: Vec<(BufferRef, (&[u8], i64))> =
            latest_per_buffer(&valid).into_iter().collect();
        let buffer_index: HashMap<BufferRef, usize> = buffers
            .iter()
            .enumerate()
            .map(|(i, (b, _))| (*b, i))
            .collect();
        let mut buffer_ids: Vec<i64> = vec![0; buffers.len()];
        for chunk in sized_chunks(&buffers, LOOKUP_CHUNK) {
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
            // Written only when new or moved forward by a step (as on PostgreSQL, see
            // `LAST_MESSAGE_AT_STEP_MS`); the ids of rows the WHERE skips are looked up.
            qb.push(
                " ON CONFLICT (network_id, key) DO UPDATE \
                 SET last_message_at = excluded.last_message_at \
                 WHERE buffers.last_message_at IS NULL \
                    OR excluded.last_message_at >= buffers.last_message_at + ",
            );
            qb.push_bind(LAST_MESSAGE_AT_STEP_MS);
            qb.push(" RETURNING network_id, key, id");
            let rows: Vec<(i64, Vec<u8>, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            for (network, key, id) in rows {
                if let Some(&i) = buffer_index.get(&(network, &key[..])) {
                    buffer_ids[i] = id;
                }
            }
        }
        let missing: Vec<&BufferRef> = buffers
            .iter()
            .zip(&buffer_ids)
            .filter(|(_, &id)| id == 0)
            .map(|((b, _), _)| b)
            .collect();
        for chunk in sized_chunks(&missing, LOOKUP_CHUNK) {
            // A join with the list (`(a, b) IN (VALUES …)` can scan the table).
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT b.network_id, b.key, b.id FROM (VALUES ");
            let mut sep = qb.separated(", ");
            for (network, key) in chunk {
                sep.push("(")
                    .push_bind_unseparated(*network)
                    .push_unseparated(", ")
                    .push_bind_unseparated(*key)
                    .push_unseparated(")");
            }
            qb.push(") v JOIN buffers b ON b.network_id = v.column1 AND b.key = v.column2");
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
        for chunk in sized_chunks(&distinct_bodies, LOOKUP_CHUNK) {
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
        for chunk in sized_chunks(&missing, LOOKUP_CHUNK) {
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

        // Thin rows, many per statement; shared lines as events (`shared.rs`).
        let (shared, rows): (Vec<Row>, Vec<Row>) = valid
            .iter()
            .zip(&body_of)
            .map(|(m, &b)| {
                let buffer = buffer_index[&(m.network_id, &m.buffer_key[..])];
                (*m, buffer_ids[buffer], body_ids[&distinct_bodies[b].0])
            })
            .partition(|(m, _, _)| m.stream.is_some());
        let shared: Vec<SharedRow> = shared
            .into_iter()
            .map(|(m, buffer_id, body_id)| SharedRow {
                m,
                buffer_id,
                body_id,
            })
            .collect();
        let learnt = insert_events(&mut Conn::Sqlite(&mut tx), &self.shared, &shared).await?;
        for chunk in sized_chunks(&rows, MESSAGE_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                // OR IGNORE: a message already stored (same user and seq) is skipped, so
                // a retried batch is safe. (Not `ON CONFLICT DO NOTHING`: with it, NOT
                // NULL still aborts, which makes SQLite keep a statement journal.)
                // No `network_id`: on SQLite a message's network is its buffer's
                // (migration 0016).
                "INSERT OR IGNORE INTO messages (user_id, seq, buffer_id, time, sender, command, msgid, body_id, epoch) ",
            );
            qb.push_values(chunk, |mut b, (m, buffer_id, body_id)| {
                b.push_bind(m.user_id)
                    .push_bind(m.seq)
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
        self.shared.apply(learnt);
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
    async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(fts) = fts5_query(&q.text) else {
            return Ok(Vec::new());
        };
        let mut k = (q.limit * 4).max(200);
        loop {
            // Per-user rows and shared events joined apart, then merged.
            let mut rows: Vec<MessageRow> = Vec::new();
            for table in LINE_SOURCES {
                let mut sql = Sql::new(
                    "WITH hits AS MATERIALIZED (SELECT rowid AS id FROM bodies_fts WHERE bodies_fts MATCH ",
                );
                sql.push_bind(fts.as_str());
                sql.push(" ORDER BY rowid DESC LIMIT ").push_bind(k);
                sql.push(&format!(
                    ") SELECT {MESSAGE_COLUMNS} FROM hits \
                     CROSS JOIN {table} m ON m.body_id = hits.id \
                     JOIN buffers b ON b.id = m.buffer_id JOIN bodies bo ON bo.id = m.body_id \
                     WHERE "
                ));
                push_search_filters(&mut sql, q, q.sender.as_deref());
                sql.push(" ORDER BY m.seq DESC LIMIT ").push_bind(q.limit);
                let got: Vec<MessageRow> =
                    sql.query_as::<Sqlite, _>()?.fetch_all(&self.pool).await?;
                rows.extend(got);
            }
            let rows = merge_page(rows, true, q.limit);
            if rows.len() as i64 >= q.limit {
                return Ok(rows);
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
                return Ok(rows);
            }
            k = k.saturating_mul(8);
        }
    }

    #[cfg(test)]
    async fn check_search_index(&self) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO bodies_fts (bodies_fts) VALUES ('integrity-check')")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Turns free text into an FTS5 query: every word quoted (quotes doubled), ANDed. Words
/// without any letter or digit are dropped, since they match nothing. `None` when no word
/// is left.
pub(super) fn fts5_query(text: &str) -> Option<String> {
    let terms: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" AND "))
    }
}
