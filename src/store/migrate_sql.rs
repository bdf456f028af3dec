// The SQL of `store::migrate`, the same text for both backends: included by
// `sqlite/migrate.rs` and `postgres/migrate.rs`, where `Db` and `self.pool` are that
// backend's. (Times are unix-ms integers and ids plain integers on both.)

use crate::store::migrate::{
    migration_state, move_state, MigrationRecord, MigrationUser, NewMigration, UserProgress,
};
use crate::store::types::UserId;
use crate::store::StoreError;

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

type UserRow = (
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

fn user(r: UserRow) -> MigrationUser {
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

impl Db {
    pub(in crate::store) async fn create_migration(
        &self,
        m: &NewMigration<'_>,
        users: &[MigrationUser],
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
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
        .fetch_one(&mut *tx)
        .await?;
        for u in users {
            sqlx::query(
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
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    pub(in crate::store) async fn migration(
        &self,
        id: i64,
    ) -> Result<Option<MigrationRecord>, StoreError> {
        let row: Option<MigrationRow> = sqlx::query_as(&format!(
            "SELECT {MIGRATION_COLS} FROM migrations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(migration))
    }

    pub(in crate::store) async fn migrations(&self) -> Result<Vec<MigrationRecord>, StoreError> {
        let rows: Vec<MigrationRow> = sqlx::query_as(&format!(
            "SELECT {MIGRATION_COLS} FROM migrations ORDER BY id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(migration).collect())
    }

    pub(in crate::store) async fn migration_users(
        &self,
        id: i64,
    ) -> Result<Vec<MigrationUser>, StoreError> {
        let rows: Vec<UserRow> = sqlx::query_as(&format!(
            "SELECT {USER_COLS} FROM migration_users WHERE migration_id = $1 \
             ORDER BY batch, user_id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(user).collect())
    }

    pub(in crate::store) async fn set_migration_state(
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
        let r = sqlx::query(
            "UPDATE migrations SET state = $2, note = $3, updated_at = $4, \
             started_at = CASE WHEN started_at IS NULL AND $2 = 'running' THEN $4 ELSE started_at END, \
             finished_at = CASE WHEN $5 THEN $4 ELSE NULL END WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(note)
        .bind(now)
        .bind(done)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("migration {id}")));
        }
        Ok(())
    }

    pub(in crate::store) async fn lock_migration(
        &self,
        id: i64,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE migrations SET lock_holder = $2, lock_expires = $4 WHERE id = $1 AND \
             (lock_holder IS NULL OR lock_holder = $2 OR lock_expires < $3)",
        )
        .bind(id)
        .bind(holder)
        .bind(now)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub(in crate::store) async fn set_rejections_baseline(
        &self,
        id: i64,
        baseline: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE migrations SET rejections_baseline = $2 \
             WHERE id = $1 AND rejections_baseline = ''",
        )
        .bind(id)
        .bind(baseline)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn unlock_migration(
        &self,
        id: i64,
        holder: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE migrations SET lock_holder = NULL, lock_expires = 0 \
             WHERE id = $1 AND lock_holder = $2",
        )
        .bind(id)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn update_migration_user(
        &self,
        id: i64,
        user: UserId,
        p: &UserProgress<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
