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
use super::{Store, StoreError};

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

const MIGRATION_COLS: &str = "id, kind, source_node, targets, options, state, note, \
     lock_holder, lock_expires, parent, started_at, finished_at, created_at, updated_at, \
     rejections_baseline";
const USER_COLS: &str = "migration_id, user_id, user_name, from_node, to_node, batch, state, \
     downtime_ms, error, attempts, gaps, started_at, finished_at";

type MigrationRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    String,
);

fn migration(r: MigrationRow) -> MigrationRecord {
    MigrationRecord {
        id: r.0,
        kind: r.1,
        source_node: r.2,
        targets: r
            .3
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        options: r.4,
        state: r.5,
        note: r.6,
        lock_holder: r.7,
        lock_expires: r.8,
        parent: r.9,
        started_at: r.10,
        finished_at: r.11,
        created_at: r.12,
        updated_at: r.13,
        rejections_baseline: r.14,
    }
}

type MigrationUserRow = (
    i64,
    i64,
    String,
    String,
    String,
    i64,
    String,
    Option<i64>,
    String,
    i64,
    String,
    Option<i64>,
    Option<i64>,
);

fn user(r: MigrationUserRow) -> MigrationUser {
    MigrationUser {
        migration_id: r.0,
        user_id: r.1,
        user_name: r.2,
        from_node: r.3,
        to_node: r.4,
        batch: r.5,
        state: r.6,
        downtime_ms: r.7,
        error: r.8,
        attempts: r.9,
        gaps: r.10,
        started_at: r.11,
        finished_at: r.12,
    }
}

impl Store {
    /// Creates a migration in state `planned` with its users (all `pending`), in one
    /// transaction. Returns its id.
    pub async fn create_migration(
        &self,
        m: &NewMigration<'_>,
        users: &[MigrationUser],
    ) -> Result<i64, StoreError> {
        let mut tx = self.db.begin().await?;
        let id: i64 = tx
            .query(
                "INSERT INTO migrations (kind, source_node, targets, options, state, parent, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
            )
            .bind(m.kind)
            .bind(m.source_node)
            .bind(m.targets.join(","))
            .bind(m.options)
            .bind(migration_state::PLANNED)
            .bind(m.parent)
            .bind(m.now)
            .fetch_scalar()
            .await?;
        for u in users {
            tx.query(
                "INSERT INTO migration_users (migration_id, user_id, user_name, from_node, \
                 to_node, batch, state) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(u.user_id)
            .bind(&u.user_name)
            .bind(&u.from_node)
            .bind(&u.to_node)
            .bind(u.batch)
            .bind(move_state::PENDING)
            .execute()
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    pub async fn migration(&self, id: i64) -> Result<Option<MigrationRecord>, StoreError> {
        let row: Option<MigrationRow> = self
            .db
            .query(format!(
                "SELECT {MIGRATION_COLS} FROM migrations WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional()
            .await?;
        Ok(row.map(migration))
    }

    /// Every migration, newest first.
    pub async fn migrations(&self) -> Result<Vec<MigrationRecord>, StoreError> {
        let rows: Vec<MigrationRow> = self
            .db
            .query(format!(
                "SELECT {MIGRATION_COLS} FROM migrations ORDER BY id DESC"
            ))
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(migration).collect())
    }

    /// A migration's users, by batch then user id.
    pub async fn migration_users(&self, id: i64) -> Result<Vec<MigrationUser>, StoreError> {
        let rows: Vec<MigrationUserRow> = self
            .db
            .query(format!(
                "SELECT {USER_COLS} FROM migration_users WHERE migration_id = $1 \
                 ORDER BY batch, user_id"
            ))
            .bind(id)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(user).collect())
    }

    /// Sets a migration's state and note.
    pub async fn set_migration_state(
        &self,
        id: i64,
        state: &str,
        note: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let done = matches!(
            state,
            migration_state::COMPLETED | migration_state::ABORTED | migration_state::ROLLED_BACK
        );
        let n = self
            .db
            .query(
                "UPDATE migrations SET state = $2, note = $3, updated_at = $4, \
                 started_at = CASE WHEN started_at IS NULL AND $2 = 'running' THEN $4 \
                 ELSE started_at END, \
                 finished_at = CASE WHEN $5 THEN $4 ELSE NULL END WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(note)
            .bind(now)
            .bind(done)
            .execute()
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("migration {id}")));
        }
        Ok(())
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
        let n = self
            .db
            .query(
                "UPDATE migrations SET lock_holder = $2, lock_expires = $4 WHERE id = $1 AND \
                 (lock_holder IS NULL OR lock_holder = $2 OR lock_expires < $3)",
            )
            .bind(id)
            .bind(holder)
            .bind(now)
            .bind(until)
            .execute()
            .await?;
        Ok(n == 1)
    }

    /// Records the nodes' rejection counters at the first batch; a later call (a
    /// resumed run) keeps the first.
    pub async fn set_rejections_baseline(&self, id: i64, baseline: &str) -> Result<(), StoreError> {
        self.db
            .query(
                "UPDATE migrations SET rejections_baseline = $2 \
                 WHERE id = $1 AND rejections_baseline = ''",
            )
            .bind(id)
            .bind(baseline)
            .execute()
            .await?;
        Ok(())
    }

    /// Gives the lock back (only if `holder` has it).
    pub async fn unlock_migration(&self, id: i64, holder: &str) -> Result<(), StoreError> {
        self.db
            .query(
                "UPDATE migrations SET lock_holder = NULL, lock_expires = 0 \
                 WHERE id = $1 AND lock_holder = $2",
            )
            .bind(id)
            .bind(holder)
            .execute()
            .await?;
        Ok(())
    }

    /// Records a user's progress.
    pub async fn update_migration_user(
        &self,
        id: i64,
        user: UserId,
        p: &UserProgress<'_>,
    ) -> Result<(), StoreError> {
        self.db
            .query(
                "UPDATE migration_users SET state = $3, error = $4, \
                 downtime_ms = COALESCE($5, downtime_ms), gaps = COALESCE($6, gaps), \
                 attempts = attempts + $7, started_at = COALESCE($8, started_at), \
                 finished_at = COALESCE($9, finished_at) \
                 WHERE migration_id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(user)
            .bind(p.state)
            .bind(p.error)
            .bind(p.downtime_ms)
            .bind(p.gaps)
            .bind(i64::from(p.attempt))
            .bind(p.started_at)
            .bind(p.finished_at)
            .execute()
            .await?;
        Ok(())
    }
}
