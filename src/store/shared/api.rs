// The backend-independent body of `sqlite/api.rs` and `postgres/api.rs`, included
// by both (`include!`): the SQL is the same but for the substring function
// `CONTAINS` each of them defines.

use super::Db;
use crate::store::types::{NetworkId, UserId};
use crate::store::{not_found_on_fk, StoreError};

impl Db {
    pub(in crate::store) async fn create_session(
        &self,
        user: UserId,
        hash: &[u8],
        now: i64,
        expires: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created_at, last_used_at, expires_at) \
             VALUES ($1, $2, $3, $3, $4)",
        )
        .bind(hash)
        .bind(user)
        .bind(now)
        .bind(expires)
        .execute(&self.pool)
        .await
        .map_err(not_found_on_fk(|| format!("user {user}")))?;
        Ok(())
    }

    pub(in crate::store) async fn session(
        &self,
        hash: &[u8],
    ) -> Result<Option<(i64, i64, i64, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT user_id, created_at, last_used_at, expires_at FROM sessions WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn touch_session(
        &self,
        hash: &[u8],
        now: i64,
        expires: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_used_at = $2, expires_at = $3 WHERE token_hash = $1")
            .bind(hash)
            .bind(now)
            .bind(expires)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn delete_session(&self, hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn delete_expired_sessions(
        &self,
        now: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub(in crate::store) async fn unread_counts(
        &self,
        user: UserId,
        network: NetworkId,
        nick: &str,
    ) -> Result<Vec<(Vec<u8>, i64, i64, i64)>, StoreError> {
        let sql = format!(
            "SELECT b.key, COUNT(*) AS unread, \
             COALESCE(SUM(CASE WHEN m.command IN ('PRIVMSG', 'ACTION', 'NOTICE') \
                 AND lower(m.sender) <> lower($3) THEN 1 ELSE 0 END), 0) AS chat, \
             COALESCE(SUM(CASE WHEN m.command IN ('PRIVMSG', 'ACTION', 'NOTICE') \
                 AND $3 <> '' AND {CONTAINS}(lower(bo.text), lower($3)) > 0 \
                 AND lower(m.sender) <> lower($3) THEN 1 ELSE 0 END), 0) AS highlights \
             FROM buffers b \
             JOIN messages m ON m.buffer_id = b.id AND m.seq > b.read_marker \
             JOIN bodies bo ON bo.id = m.body_id \
             WHERE b.network_id = $2 AND m.user_id = $1 \
             GROUP BY b.id, b.key"
        );
        Ok(sqlx::query_as(&sql)
        .bind(user)
        .bind(network)
        .bind(nick)
        .fetch_all(&self.pool)
        .await?)
    }
}
