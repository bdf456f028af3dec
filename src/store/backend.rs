//! The one place that knows there are two backends.
//!
//! [`Backend`] is what each backend provides itself, because it really differs:
//! connecting (pool sizes, pragmas, session settings), its migrations, how a write
//! transaction begins, statistics and memory upkeep, the batch insert of backlog and
//! full-text search. `sqlite::SqliteDb` and `postgres::PostgresDb` implement it and
//! nothing else.
//!
//! [`AnyDb`] holds one of them. Everything else the store does is SQL that reads the
//! same on both databases: the [`Store`](super::Store) methods write it once as an
//! [`Sql`] and run it through [`AnyDb::query`] (or [`AnyTx::query`] inside a
//! transaction), which picks the pool and hands the statement to sqlx for that
//! database. The `match`es in this file are the only places in the store that ask
//! which backend it is; dispatch is static, once per statement, and rows are decoded by
//! the backend's own driver.
//!
//! Why an enum rather than `Arc<dyn Backend>`: running shared SQL decodes rows into
//! the caller's type (`fetch_all::<R>()`), a generic method that a trait object cannot
//! have, and a two-armed `match` costs nothing. Why not a generic `Store<B>`: `Store`
//! is one public type whichever URL it was opened with.

use sqlx::migrate::Migrator;
use sqlx::{
    PgConnection, PgPool, Pool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction,
};

use super::postgres::PostgresDb;
use super::shared::{Conn, SharedCache};
use super::sql::{Dialect, Param, Record, Sql};
use super::sqlite::SqliteDb;
use super::types::{NewMessage, SearchQuery, StoredMessage, UserId};
use super::StoreError;

/// What a backend does its own way. Everything not here is shared SQL.
pub(super) trait Backend {
    /// sqlx's database type, with what the shared SQL needs of it.
    type Db: Dialect;

    /// `"sqlite"` or `"postgres"`.
    const NAME: &'static str;

    /// The pool shared SQL runs on.
    fn pool(&self) -> &Pool<Self::Db>;

    /// The backend's migrations (`migrations/sqlite`, `migrations/postgres`).
    fn migrator(&self) -> &'static Migrator;

    /// Begins a transaction that will write.
    async fn begin(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;

    /// Closes every connection; later calls fail.
    async fn close(&self);

    /// See [`Store::optimize`](super::Store::optimize).
    async fn optimize(&self) -> Result<(), StoreError>;

    /// See [`Store::release_memory`](super::Store::release_memory).
    async fn release_memory(&self) -> Result<(), StoreError>;

    /// Stores a batch in one transaction; with `fence_node`, drops the messages of
    /// users that node no longer owns at the message's epoch and returns those users.
    /// See [`Store::insert_messages_fenced`](super::Store::insert_messages_fenced).
    async fn insert_messages(
        &self,
        batch: &[NewMessage],
        fence_node: Option<&str>,
    ) -> Result<Vec<UserId>, StoreError>;

    /// See [`Store::search`](super::Store::search); `q` has words and a positive limit.
    async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError>;

    /// Fails when the full-text index is out of step with `bodies` (where the backend
    /// can tell).
    #[cfg(test)]
    async fn check_search_index(&self) -> Result<(), StoreError>;
}

/// The backend of a store.
pub(super) enum AnyDb {
    Sqlite(SqliteDb),
    Postgres(PostgresDb),
}

impl AnyDb {
    /// Checks that the database is not newer than this binary, then migrates it.
    pub(super) async fn migrate(&mut self) -> Result<(), StoreError> {
        let exists: bool = self
            .query(self.has_migrations_table())
            .fetch_scalar()
            .await?;
        if exists {
            let found = self.schema_version().await?;
            let supported = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
            if found > supported {
                return Err(StoreError::SchemaTooNew { found, supported });
            }
        }
        // On PostgreSQL the migrator holds an advisory lock, so nodes starting
        // together take turns.
        match self {
            AnyDb::Sqlite(b) => {
                b.migrator().run(b.pool()).await?;
                b.fresh_connections().await?;
            }
            AnyDb::Postgres(b) => b.migrator().run(b.pool()).await?,
        }
        Ok(())
    }

    /// The highest applied migration version.
    pub(super) async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> = self
            .query("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_scalar()
            .await?;
        Ok(v.unwrap_or(0))
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            AnyDb::Sqlite(_) => SqliteDb::NAME,
            AnyDb::Postgres(_) => PostgresDb::NAME,
        }
    }

    /// [`Dialect::NOW`] of this backend.
    pub(super) fn now(&self) -> &'static str {
        match self {
            AnyDb::Sqlite(_) => Sqlite::NOW,
            AnyDb::Postgres(_) => Postgres::NOW,
        }
    }

    /// [`Dialect::CONTAINS`] of this backend.
    pub(super) fn contains(&self) -> &'static str {
        match self {
            AnyDb::Sqlite(_) => Sqlite::CONTAINS,
            AnyDb::Postgres(_) => Postgres::CONTAINS,
        }
    }

    fn has_migrations_table(&self) -> &'static str {
        match self {
            AnyDb::Sqlite(_) => Sqlite::HAS_MIGRATIONS_TABLE,
            AnyDb::Postgres(_) => Postgres::HAS_MIGRATIONS_TABLE,
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self {
            AnyDb::Sqlite(b) => b.migrator(),
            AnyDb::Postgres(b) => b.migrator(),
        }
    }

    /// A statement to run on the pool.
    pub(super) fn query<'a>(&'a self, sql: impl Into<Sql<'a>>) -> Query<'a> {
        let on = match self {
            AnyDb::Sqlite(b) => On::Sqlite(b.pool()),
            AnyDb::Postgres(b) => On::Postgres(b.pool()),
        };
        Query::new(on, sql.into())
    }

    /// Begins a write transaction (on SQLite `BEGIN IMMEDIATE`, so it never fails
    /// with SQLITE_BUSY when its first read turns into a write).
    pub(super) async fn begin(&self) -> Result<AnyTx, sqlx::Error> {
        Ok(match self {
            AnyDb::Sqlite(b) => AnyTx::Sqlite(b.begin().await?),
            AnyDb::Postgres(b) => AnyTx::Postgres(b.begin().await?),
        })
    }

    pub(super) async fn close(&self) {
        match self {
            AnyDb::Sqlite(b) => b.close().await,
            AnyDb::Postgres(b) => b.close().await,
        }
    }

    pub(super) async fn optimize(&self) -> Result<(), StoreError> {
        match self {
            AnyDb::Sqlite(b) => b.optimize().await,
            AnyDb::Postgres(b) => b.optimize().await,
        }
    }

    pub(super) async fn release_memory(&self) -> Result<(), StoreError> {
        match self {
            AnyDb::Sqlite(b) => b.release_memory().await,
            AnyDb::Postgres(b) => b.release_memory().await,
        }
    }

    pub(super) async fn insert_messages(
        &self,
        batch: &[NewMessage],
        fence_node: Option<&str>,
    ) -> Result<Vec<UserId>, StoreError> {
        match self {
            AnyDb::Sqlite(b) => b.insert_messages(batch, fence_node).await,
            AnyDb::Postgres(b) => b.insert_messages(batch, fence_node).await,
        }
    }

    /// Forgets the cached ids of streams and audiences (buffers were deleted).
    pub(super) fn forget_shared(&self) {
        self.shared_cache().clear();
    }

    /// The writer's cached ids of streams and audiences (`shared.rs`).
    pub(super) fn shared_cache(&self) -> &SharedCache {
        match self {
            AnyDb::Sqlite(b) => &b.shared,
            AnyDb::Postgres(b) => &b.shared,
        }
    }

    pub(super) async fn search(&self, q: &SearchQuery) -> Result<Vec<StoredMessage>, StoreError> {
        match self {
            AnyDb::Sqlite(b) => b.search(q).await,
            AnyDb::Postgres(b) => b.search(q).await,
        }
    }

    #[cfg(test)]
    pub(super) async fn check_search_index(&self) -> Result<(), StoreError> {
        match self {
            AnyDb::Sqlite(b) => b.check_search_index().await,
            AnyDb::Postgres(b) => b.check_search_index().await,
        }
    }
}

/// A write transaction of either backend. Dropped without [`AnyTx::commit`], it rolls
/// back.
pub(super) enum AnyTx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl AnyTx {
    /// A statement to run in the transaction.
    pub(super) fn query<'a>(&'a mut self, sql: impl Into<Sql<'a>>) -> Query<'a> {
        let on = match self {
            AnyTx::Sqlite(tx) => On::SqliteTx(tx),
            AnyTx::Postgres(tx) => On::PostgresTx(tx),
        };
        Query::new(on, sql.into())
    }

    /// The transaction's connection, for the code both backends share (`shared.rs`).
    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            AnyTx::Sqlite(tx) => Conn::Sqlite(tx),
            AnyTx::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            AnyTx::Sqlite(tx) => tx.commit().await,
            AnyTx::Postgres(tx) => tx.commit().await,
        }
    }
}

/// Where a [`Query`] runs.
enum On<'a> {
    Sqlite(&'a SqlitePool),
    Postgres(&'a PgPool),
    SqliteTx(&'a mut SqliteConnection),
    PostgresTx(&'a mut PgConnection),
}

/// A shared statement and where it runs; built by [`AnyDb::query`] and
/// [`AnyTx::query`], like `sqlx::query(…)` with the executor given up front.
pub(super) struct Query<'a> {
    on: On<'a>,
    sql: Sql<'a>,
}

impl<'a> Query<'a> {
    /// The statement `sql` to run `on`; on SQLite with anonymous placeholders where
    /// they can be (`Sql::positional_for_sqlite`).
    fn new(on: On<'a>, mut sql: Sql<'a>) -> Self {
        if matches!(on, On::Sqlite(_) | On::SqliteTx(_)) {
            sql.positional_for_sqlite();
        }
        Query { on, sql }
    }

    /// A statement to run on a SQLite connection (inside a backend's own transaction).
    pub(super) fn on_sqlite(conn: &'a mut SqliteConnection, sql: Sql<'a>) -> Self {
        Query::new(On::SqliteTx(conn), sql)
    }

    /// A statement to run on a PostgreSQL connection (inside a backend's own
    /// transaction).
    pub(super) fn on_postgres(conn: &'a mut PgConnection, sql: Sql<'a>) -> Self {
        Query::new(On::PostgresTx(conn), sql)
    }

    /// Adds the next parameter (`$n` in the text).
    pub(super) fn bind(mut self, p: impl Into<Param<'a>>) -> Self {
        self.sql = self.sql.bind(p);
        self
    }

    /// Every row.
    pub(super) async fn fetch_all<R: Record>(self) -> Result<Vec<R>, sqlx::Error> {
        let sql = &self.sql;
        match self.on {
            On::Sqlite(pool) => sql.query_as::<Sqlite, R>()?.fetch_all(pool).await,
            On::Postgres(pool) => sql.query_as::<Postgres, R>()?.fetch_all(pool).await,
            On::SqliteTx(conn) => sql.query_as::<Sqlite, R>()?.fetch_all(conn).await,
            On::PostgresTx(conn) => sql.query_as::<Postgres, R>()?.fetch_all(conn).await,
        }
    }

    /// The first row, if any (the statements using it return at most one).
    pub(super) async fn fetch_optional<R: Record>(self) -> Result<Option<R>, sqlx::Error> {
        Ok(self.fetch_all().await?.into_iter().next())
    }

    /// The first row; [`sqlx::Error::RowNotFound`] when there is none.
    pub(super) async fn fetch_one<R: Record>(self) -> Result<R, sqlx::Error> {
        self.fetch_optional().await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of the first row; [`sqlx::Error::RowNotFound`] when there is
    /// none.
    pub(super) async fn fetch_scalar<T>(self) -> Result<T, sqlx::Error>
    where
        (T,): Record,
    {
        let (v,): (T,) = self.fetch_one().await?;
        Ok(v)
    }

    /// The first column of the first row, if any.
    pub(super) async fn fetch_optional_scalar<T>(self) -> Result<Option<T>, sqlx::Error>
    where
        (T,): Record,
    {
        let row: Option<(T,)> = self.fetch_optional().await?;
        Ok(row.map(|(v,)| v))
    }

    /// The first column of every row.
    pub(super) async fn fetch_column<T>(self) -> Result<Vec<T>, sqlx::Error>
    where
        (T,): Record,
    {
        let rows: Vec<(T,)> = self.fetch_all().await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// Runs the statement; returns how many rows it changed.
    pub(super) async fn execute(self) -> Result<u64, sqlx::Error> {
        let sql = &self.sql;
        Ok(match self.on {
            On::Sqlite(pool) => sql.query::<Sqlite>()?.execute(pool).await?.rows_affected(),
            On::Postgres(pool) => sql
                .query::<Postgres>()?
                .execute(pool)
                .await?
                .rows_affected(),
            On::SqliteTx(conn) => sql.query::<Sqlite>()?.execute(conn).await?.rows_affected(),
            On::PostgresTx(conn) => sql
                .query::<Postgres>()?
                .execute(conn)
                .await?
                .rows_affected(),
        })
    }
}
