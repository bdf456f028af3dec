//! What the migration tool (`ferry migrate`) keeps in the store: the plan of each
//! migration and every user's progress, written as it happens, so a killed CLI loses
//! nothing and `resume` continues exactly where it stopped.
//!
//! - `migrations`: one row per migration (kind, source node, targets, options as JSON,
//!   state) with a lock (`lock_holder`, `lock_expires`) so two CLIs never run the same
//!   migration at once: [`Store::lock_migration`] is a compare-and-set.
//! - `migration_users`: one row per user to move (from, to, batch, state, downtime,
//!   error, attempts). A user's row goes `pending → reserved → moving → moved`, or to
//!   `failed` / `rolled_back`; a row already `moved` is never moved again.
//!
//! The store knows nothing about how a move works; options are opaque JSON here.
//! Times are unix milliseconds from the caller's clock.

use super::types::UserId;
use super::{Backend, Store, StoreError};

macro_rules! dispatch {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match &*$self.backend {
            Backend::Sqlite(db) => db.$f($($arg),*).await,
            Backend::Postgres(db) => db.$f($($arg),*).await,
        }
    };
}

/// Migration states (`migrations.state`).
pub mod migration_state {
    pub const PLANNED: &str = "planned";
    pub const PREFLIGHT: &str = "preflight";
    pub const RUNNING: &str = "running";
    pub const PAUSED: &str = "paused";
    pub const COMPLETED: &str = "completed";
    pub const ABORTED: &str = "aborted";
    pub const ROLLED_BACK: &str = "rolled_back";
}

/// Per-user states (`migration_users.state`).
pub mod move_state {
    pub const PENDING: &str = "pending";
    pub const RESERVED: &str = "reserved";
    pub const MOVING: &str = "moving";
    pub const MOVED: &str = "moved";
    pub const FAILED: &str = "failed";
    pub const ROLLED_BACK: &str = "rolled_back";
}

/// One migration, as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MigrationRecord {
    pub id: i64,
    /// `drain`, `move` or `rollback`.
    pub kind: String,
    pub source_node: String,
    pub targets: Vec<String>,
    /// Options as JSON (the migration tool's own format).
    pub options: String,
    pub state: String,
    /// Why it paused or stopped.
    pub note: String,
    pub lock_holder: Option<String>,
    pub lock_expires: i64,
    /// For a rollback: the migration it undoes.
    pub parent: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// JSON object: each involved node's throttle-rejection counter when the first
    /// batch started (empty until then).
    pub rejections_baseline: String,
}

/// One user of a migration, as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MigrationUser {
    pub migration_id: i64,
    pub user_id: UserId,
    pub user_name: String,
    pub from_node: String,
    pub to_node: String,
    /// 0 is the canary batch.
    pub batch: i64,
    pub state: String,
    /// QUIT on the source to registered on the target.
    pub downtime_ms: Option<i64>,
    pub error: String,
    pub attempts: i64,
    /// Networks that got a gap marker (comma-separated names).
    pub gaps: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A user's progress update ([`Store::update_migration_user`]).
#[derive(Clone, Debug, Default)]
pub struct UserProgress<'a> {
    pub state: &'a str,
    pub error: &'a str,
    pub downtime_ms: Option<i64>,
    pub gaps: Option<&'a str>,
    /// Count one more attempt (set when a move starts).
    pub attempt: bool,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A new migration ([`Store::create_migration`]).
#[derive(Clone, Debug)]
pub struct NewMigration<'a> {
    pub kind: &'a str,
    pub source_node: &'a str,
    pub targets: &'a [String],
    pub options: &'a str,
    pub parent: Option<i64>,
    pub now: i64,
}

impl Store {
    /// Creates a migration in state `planned` with its users (all `pending`), in one
    /// transaction. Returns its id.
    pub async fn create_migration(
        &self,
        m: &NewMigration<'_>,
        users: &[MigrationUser],
    ) -> Result<i64, StoreError> {
        dispatch!(self.create_migration(m, users))
    }

    pub async fn migration(&self, id: i64) -> Result<Option<MigrationRecord>, StoreError> {
        dispatch!(self.migration(id))
    }

    /// Every migration, newest first.
    pub async fn migrations(&self) -> Result<Vec<MigrationRecord>, StoreError> {
        dispatch!(self.migrations())
    }

    /// A migration's users, by batch then user id.
    pub async fn migration_users(&self, id: i64) -> Result<Vec<MigrationUser>, StoreError> {
        dispatch!(self.migration_users(id))
    }

    /// Sets a migration's state and note.
    pub async fn set_migration_state(
        &self,
        id: i64,
        state: &str,
        note: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self.set_migration_state(id, state, note, now))
    }

    /// Takes (or renews) the migration's lock for `holder` until `until`, if nobody
    /// else holds an unexpired one. Returns whether `holder` has it.
    pub async fn lock_migration(
        &self,
        id: i64,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self.lock_migration(id, holder, now, until))
    }

    /// Records the nodes' rejection counters at the first batch; a later call (a
    /// resumed run) keeps the first.
    pub async fn set_rejections_baseline(&self, id: i64, baseline: &str) -> Result<(), StoreError> {
        dispatch!(self.set_rejections_baseline(id, baseline))
    }

    /// Gives the lock back (only if `holder` has it).
    pub async fn unlock_migration(&self, id: i64, holder: &str) -> Result<(), StoreError> {
        dispatch!(self.unlock_migration(id, holder))
    }

    /// Records a user's progress.
    pub async fn update_migration_user(
        &self,
        id: i64,
        user: UserId,
        p: &UserProgress<'_>,
    ) -> Result<(), StoreError> {
        dispatch!(self.update_migration_user(id, user, p))
    }
}
