//! Storage: users, networks, buffers, backlog with full-text search, and node records.
//!
//! One schema, two backends behind one [`Store`]: SQLite (the default, a single file)
//! and PostgreSQL (shared by the nodes of a cluster), chosen by the database URL.
//! `store` knows nothing about IRC beyond "names are bytes": callers casefold names and
//! assign message sequence numbers.
//!
//! # Schema, shaped for scale
//!
//! A hosted bouncer has many users in the same channels, and the same channel line
//! reaches every user's upstream connection with identical bytes (same tags, msgid,
//! server-time). So the backlog is split in two:
//!
//! - `bodies(id, hash, raw, text)`: each distinct line once, content-addressed by the
//!   SHA-256 of its raw bytes (`hash` is UNIQUE). `raw` is a BLOB/BYTEA (IRC lines may
//!   be invalid UTF-8); `text` is the display/search text.
//! - `messages(user_id, seq, buffer_id, time, sender, command, msgid, body_id,
//!   epoch)`: one *thin* row per delivery, unique by `(user_id, seq)`; `seq` is the
//!   public message id. Two identical lines are still two messages (two thin rows
//!   pointing at one body), so nothing is lost. Three B-trees per row, each serving
//!   a set of queries (migration 0016; the plans are in docs/benchmarks.md §9):
//!   `(buffer_id, seq)` (a buffer's history, unread counts, retention by age; on
//!   SQLite the table itself, `WITHOUT ROWID`), `(user_id, seq)` (the newest seq,
//!   websocket resume, a network's replay, retention by count) and `body_id` (on
//!   SQLite `(body_id, user_id)`: search, body clean-up). A message's network is its buffer's (PostgreSQL still
//!   fills a `network_id` column for nodes of the previous version; nothing reads it).
//!
//! - Shared channel lines (migration 0018, `shared.rs`): rows of one
//!   [`NewMessage::stream`] and seq, from several users, are ONE
//!   `events(stream_id, id, audience_id, time, sender, command, msgid, body_id)` row;
//!   `streams(id, node, server, channel)` names the stream, `audiences(id,
//!   stream_id, hash)` + `audience_members(audience_id, buffer_id, user_id,
//!   network_id)` the interned set of buffers that see it. `buffers.shared_from`
//!   hides a buffer's older events (retention). The view `shared_lines` has a
//!   buffer's visible events shaped like `messages`; `lines` is both. An event is
//!   deleted once no member buffer shows it (`Store::collect_events`).
//!
//! The full-text index covers `bodies` only, so its cost is per distinct line, not per
//! delivery: an FTS5 external-content table kept in sync by triggers on SQLite, a
//! generated `tsvector` column with a GIN index on PostgreSQL. A search matches bodies
//! and joins them with the searching user's thin rows, so a user never sees another
//! user's messages even when they share bodies. Retention deletes thin rows per user and
//! then garbage-collects bodies nothing refers to.
//!
//! `buffers(network_id, key, name, kind, joined, chan_key, read_marker,
//! last_message_at)` hold the durable part of session state, unique by
//! `(network_id, key)` where `key` is the casefolded name; they are created on first use
//! by [`Store::insert_messages`] and [`Store::set_channel`]; the writer moves
//! `last_message_at` forward only in steps of [`LAST_MESSAGE_AT_STEP_MS`] (a row
//! rewrite per buffer per batch would cost more than shared lines). Also: `users` (with
//! retention limits), `networks` (unique per user by name), `client_positions` (what
//! each client has seen), `nodes` (how admin commands find running nodes) and the
//! Web Push tables (`push_vapid`, `push_subscriptions`, `push_settings`, `push_mutes`),
//! and `invites` (sign-up links: token hash, expiry, `used_at`). Everything
//! below a user cascades on delete. Times are unix milliseconds.
//!
//! Migrations are append-only files under `migrations/{sqlite,postgres}`, written
//! expand/contract so a node being drained can keep running the old code against the
//! new schema. A database newer than this binary is refused ([`StoreError::SchemaTooNew`]).
//!
//! Writes of backlog go through [`Writer`], which batches them (group commit).
//!
//! # Code
//!
//! The `Store` methods are grouped by subject (`users.rs`, `backlog.rs`, `api.rs`,
//! `cluster.rs`, `limits.rs`, `migrate.rs`, `push.rs`, `invites.rs`) and hold their SQL, written once for both
//! databases as an `Sql` (text and parameters, `sql.rs`) and run through the one
//! dispatch point, `backend.rs`. `sqlite.rs` and `postgres.rs` hold only what differs:
//! connection setup, the batch insert of backlog and full-text search.

mod api;
mod backend;
mod backlog;
mod cluster;
mod invites;
mod limits;
pub mod migrate;
pub mod outage;
mod positions;
mod postgres;
mod prefs;
mod preload;
mod push;
mod secrets;
mod shared;
mod sql;
mod sqlite;
mod types;
mod users;
mod writer;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::secrets::SecretKey;
pub use api::{Session, UnreadCount};
use backend::AnyDb;
pub use cluster::SEQ_RESERVE;
pub use invites::Invite;
pub use limits::{NetworkLimits, PlacedNetwork, SessionCount};
pub use outage::OutageConfig;
pub use positions::{PositionMetrics, PositionStats, Positions};
pub use preload::StartRows;
pub use push::{PushSettings, StoredSubscription};
pub use secrets::SecretsReport;
pub use types::*;
pub use writer::{
    Settle, Writer, WriterClosed, WriterConfig, WriterFence, WriterMetrics, WriterStats,
};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    BadUrl(String),
    #[error("database schema is version {found}, this Ferry understands up to {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// The node rides out a store outage: nothing is asked of the store until it
    /// answers again (see `lease`).
    #[error("the store is unreachable")]
    Unavailable,
    /// Another transaction changed what this one relied on (an audience the writer
    /// had cached was collected meanwhile, `shared::confirm_audiences`): retrying
    /// the whole write succeeds.
    #[error("changed concurrently: {0}")]
    Raced(&'static str),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`] naming `what`.
    pub(crate) fn conflict_on(
        what: impl FnOnce() -> String,
    ) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what()),
            _ => StoreError::Db(e),
        }
    }

    /// Whether retrying the same write cannot help (a constraint rejects the data).
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(d)) => matches!(
                d.kind(),
                sqlx::error::ErrorKind::UniqueViolation
                    | sqlx::error::ErrorKind::ForeignKeyViolation
                    | sqlx::error::ErrorKind::NotNullViolation
                    | sqlx::error::ErrorKind::CheckViolation
            ),
            StoreError::Db(_)
            | StoreError::Migrate(_)
            | StoreError::Unavailable
            | StoreError::Raced(_) => false,
            _ => true,
        }
    }
}

/// A handle on the database; cheap to clone.
///
/// Its methods are spread over the files of the store by subject (`users.rs`,
/// `backlog.rs`, `api.rs`, `cluster.rs`, `limits.rs`, `migrate.rs`); each holds its SQL,
/// written once for both backends (see `backend.rs`).
#[derive(Clone)]
pub struct Store {
    db: Arc<AnyDb>,
    /// Seals and opens the secrets of rows (SASL passwords); `None` until given
    /// ([`Store::with_secret_key`]): then writing or reading one is an error.
    key: Option<Arc<SecretKey>>,
}

impl Store {
    /// Opens (and migrates) the database at `url`: `postgres://…`, `postgresql://…`,
    /// `sqlite://PATH`, `sqlite:PATH` or a plain file path. A missing SQLite file and its
    /// parent directory are created.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`] for another scheme, [`StoreError::SchemaTooNew`] when the
    /// database was migrated by a newer Ferry, else database or migration errors.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let mut db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            AnyDb::Postgres(postgres::PostgresDb::connect(url).await?)
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            AnyDb::Sqlite(sqlite::SqliteDb::connect(path).await?)
        } else if url.contains("://") || url.is_empty() {
            return Err(StoreError::BadUrl(url.to_owned()));
        } else {
            AnyDb::Sqlite(sqlite::SqliteDb::connect(url).await?)
        };
        db.migrate().await?;
        Ok(Store {
            db: Arc::new(db),
            key: None,
        })
    }

    /// This store with `key` sealing and opening its secrets (`secrets.rs`).
    pub fn with_secret_key(mut self, key: SecretKey) -> Store {
        self.key = Some(Arc::new(key));
        self
    }

    /// The key this store seals with, if it was given one.
    pub fn secret_key(&self) -> Option<&SecretKey> {
        self.key.as_deref()
    }

    /// Shared events whose audience a later batch widened since the store opened:
    /// a line whose rows were split across batches, its member list written twice
    /// (`store::writer` waits for an event's rows to keep this near zero).
    pub fn events_widened(&self) -> u64 {
        self.db.shared_cache().widened()
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.db.name()
    }

    /// Closes the connection pool; later calls fail.
    pub async fn close(&self) {
        self.db.close().await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.query("SELECT 1").execute().await?;
        Ok(())
    }

    /// Refreshes the query planner's statistics (SQLite `PRAGMA optimize`,
    /// PostgreSQL `ANALYZE` of the backlog tables). Run after retention and
    /// after bulk loads: with stale statistics a search can pick a plan that
    /// is orders of magnitude slower.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        self.db.optimize().await
    }

    /// Gives back memory the database layer holds for bursts: on SQLite the backlog
    /// writer's page cache (up to 16 MiB, filled by a burst of writes) is emptied; it
    /// refills on the next burst. A no-op on PostgreSQL. The writer calls this when
    /// it has been idle for a while.
    pub async fn release_memory(&self) -> Result<(), StoreError> {
        self.db.release_memory().await
    }

    /// The highest applied migration version.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.db.schema_version().await
    }
}

/// SHA-256 of a raw line: the content address of its body.
pub(crate) fn body_hash(raw: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(raw).into()
}

/// `NotFound(what)` when no row was affected.
pub(crate) fn expect_one(rows: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::NotFound(what()))
    } else {
        Ok(())
    }
}

/// Maps a foreign-key violation (the parent row is missing) to `NotFound(what)`.
pub(crate) fn not_found_on_fk(
    what: impl FnOnce() -> String,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound(what()),
        _ => StoreError::Db(e),
    }
}

#[cfg(test)]
impl Store {
    /// How many bodies are stored (SQLite: after checking the FTS index is consistent).
    pub(crate) async fn body_count(&self) -> Result<i64, StoreError> {
        self.db.check_search_index().await?;
        Ok(self
            .db
            .query("SELECT COUNT(*) FROM bodies")
            .fetch_scalar()
            .await?)
    }
}
