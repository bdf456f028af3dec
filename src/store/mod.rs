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
//! - `messages(user_id, seq, network_id, buffer_id, time, sender, command, msgid,
//!   body_id)`: one *thin* row per delivery, keyed by `(user_id, seq)`; `seq` is the
//!   public message id. Two identical lines are still two messages (two thin rows
//!   pointing at one body), so nothing is lost.
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
//! by [`Store::insert_messages`] and [`Store::set_channel`]. Also: `users` (with
//! retention limits), `networks` (unique per user by name), `client_positions` (what
//! each client has seen) and `nodes` (how admin commands find running nodes). Everything
//! below a user cascades on delete. Times are unix milliseconds.
//!
//! Migrations are append-only files under `migrations/{sqlite,postgres}`, written
//! expand/contract so a node being drained can keep running the old code against the
//! new schema. A database newer than this binary is refused ([`StoreError::SchemaTooNew`]).
//!
//! Writes of backlog go through [`Writer`], which batches them (group commit).

mod api;
mod cluster;
mod limits;
pub mod migrate;
mod postgres;
mod sqlite;
mod types;
mod writer;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use api::{Session, UnreadCount};
pub use limits::{NetworkLimits, SessionCount};
pub use types::*;
pub use writer::{Writer, WriterClosed, WriterConfig, WriterFence, WriterStats};

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
            StoreError::Db(_) | StoreError::Migrate(_) => false,
            _ => true,
        }
    }
}

enum Backend {
    Sqlite(sqlite::Db),
    Postgres(postgres::Db),
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

/// Calls the same-named function of the active backend.
macro_rules! dispatch {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match &*$self.backend {
            Backend::Sqlite(db) => db.$f($($arg),*).await,
            Backend::Postgres(db) => db.$f($($arg),*).await,
        }
    };
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
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::Db::open(url).await?)
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Backend::Sqlite(sqlite::Db::open(path).await?)
        } else if url.contains("://") || url.is_empty() {
            return Err(StoreError::BadUrl(url.to_owned()));
        } else {
            Backend::Sqlite(sqlite::Db::open(url).await?)
        };
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the connection pool; later calls fail.
    pub async fn close(&self) {
        dispatch!(self.close())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping())
    }

    /// Refreshes the query planner's statistics (SQLite `PRAGMA optimize`,
    /// PostgreSQL `ANALYZE` of the backlog tables). Run after retention and
    /// after bulk loads: with stale statistics a search can pick a plan that
    /// is orders of magnitude slower.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        dispatch!(self.optimize())
    }

    /// Gives back memory the database layer holds for bursts: on SQLite the backlog
    /// writer's page cache (up to 16 MiB, filled by a burst of writes) is emptied; it
    /// refills on the next burst. A no-op on PostgreSQL. The writer calls this when
    /// it has been idle for a while.
    pub async fn release_memory(&self) -> Result<(), StoreError> {
        dispatch!(self.release_memory())
    }

    /// The highest applied migration version.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        dispatch!(self.schema_version())
    }

    // ---- users ----

    /// # Errors
    /// [`StoreError::Conflict`] if a user with this name exists.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User, StoreError> {
        dispatch!(self.create_user(name, password_hash, is_admin))
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        dispatch!(self.user(id))
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        dispatch!(self.user_by_name(name))
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        dispatch!(self.list_users())
    }

    /// Deletes the user with its networks, buffers, messages and positions.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn delete_user(&self, id: UserId) -> Result<(), StoreError> {
        dispatch!(self.delete_user(id))
    }

    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn set_password(&self, id: UserId, password_hash: &str) -> Result<(), StoreError> {
        dispatch!(self.set_password(id, password_hash))
    }

    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn set_retention(&self, id: UserId, r: Retention) -> Result<(), StoreError> {
        dispatch!(self.set_retention(id, r))
    }

    // ---- networks ----

    /// Creates a network and its configured channels (marked joined).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the user has a network with this name,
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn create_network(
        &self,
        user: UserId,
        n: &NewNetwork,
    ) -> Result<Network, StoreError> {
        dispatch!(self.create_network(user, n))
    }

    pub async fn networks(&self, user: UserId) -> Result<Vec<Network>, StoreError> {
        dispatch!(self.networks(user))
    }

    pub async fn network(&self, id: NetworkId) -> Result<Option<Network>, StoreError> {
        dispatch!(self.network(id))
    }

    pub async fn network_by_name(
        &self,
        user: UserId,
        name: &str,
    ) -> Result<Option<Network>, StoreError> {
        dispatch!(self.network_by_name(user, name))
    }

    /// # Errors
    /// [`StoreError::NotFound`] if there is no such network.
    pub async fn delete_network(&self, id: NetworkId) -> Result<(), StoreError> {
        dispatch!(self.delete_network(id))
    }

    /// Remembers the last nick we had on the network.
    pub async fn set_network_nick(&self, id: NetworkId, nick: &str) -> Result<(), StoreError> {
        dispatch!(self.set_network_nick(id, nick))
    }

    // ---- buffers ----

    /// The network's channels and queries, ordered by key.
    pub async fn buffers(&self, network: NetworkId) -> Result<Vec<Buffer>, StoreError> {
        dispatch!(self.buffers(network))
    }

    /// Creates or updates the buffer `(network, key)`; `key` is the casefolded `name`.
    pub async fn set_channel(
        &self,
        network: NetworkId,
        name: &[u8],
        key: &[u8],
        joined: bool,
        chan_key: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        dispatch!(self.set_channel(network, name, key, joined, chan_key))
    }

    /// Moves the read marker of an existing buffer forward (never back).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such buffer.
    pub async fn set_read_marker(
        &self,
        network: NetworkId,
        key: &[u8],
        seq: Seq,
    ) -> Result<(), StoreError> {
        dispatch!(self.set_read_marker(network, key, seq))
    }

    // ---- backlog ----

    /// The highest stored seq of the user, 0 when none.
    /// Which of `msgids` (the upstream server's `msgid` tags) are already in the
    /// user's backlog of `network` (CHATHISTORY gap fill deduplicates by them).
    pub async fn msgids_known(
        &self,
        user: UserId,
        network: i64,
        msgids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self.msgids_known(user, network, msgids))
    }

    pub async fn last_seq(&self, user: UserId) -> Result<Seq, StoreError> {
        dispatch!(self.last_seq(user))
    }

    /// Stores a batch in one transaction. Messages already stored (same user and seq)
    /// are skipped, so retrying a batch is safe; messages whose network is gone (or does
    /// not belong to the message's user) are dropped.
    pub async fn insert_messages(&self, batch: &[NewMessage]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        dispatch!(self.insert_messages(batch, None)).map(|_| ())
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
        dispatch!(self.insert_messages(batch, Some(node)))
    }

    /// A page of backlog; see [`HistoryQuery`].
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        if q.limit <= 0 {
            return Ok(Vec::new());
        }
        dispatch!(self.history(q))
    }

    /// Full-text search of the user's backlog, newest first; see [`SearchQuery`].
    pub async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError> {
        if q.limit <= 0 || q.text.trim().is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self.search(q))
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
        dispatch!(self.targets(user, network, from, to, limit))
    }

    /// The last seq a client (by name) has seen on a network.
    pub async fn client_position(
        &self,
        network: NetworkId,
        client: &str,
    ) -> Result<Option<Seq>, StoreError> {
        dispatch!(self.client_position(network, client))
    }

    /// Records what a client has seen; only moves forward.
    pub async fn set_client_position(
        &self,
        network: NetworkId,
        client: &str,
        seq: Seq,
    ) -> Result<(), StoreError> {
        dispatch!(self.set_client_position(network, client, seq))
    }

    /// Deletes each user's messages beyond their max age and max count, then
    /// garbage-collects bodies no message refers to. Returns the number of messages
    /// deleted.
    pub async fn enforce_retention(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        dispatch!(self.enforce_retention(now))
    }
}

/// Turns free text into an FTS5 query: every word quoted (quotes doubled), ANDed. Words
/// without any letter or digit are dropped, since they match nothing. `None` when no word
/// is left.
pub(crate) fn fts5_query(text: &str) -> Option<String> {
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
        dispatch!(self.body_count())
    }
}
