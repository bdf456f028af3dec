//! Invite links (migration 0010): one-time sign-up tokens that `ferry user invite`
//! hands out. The store keeps the SHA-256 of each token, never the token, with its
//! expiry and when (and as whom) it was used.
//!
//! Redeeming is one transaction: the invite is marked used only if it is unused and
//! unexpired (`UPDATE … WHERE used_at IS NULL AND expires_at > now`), and the user is
//! created in the same transaction. Of two sign-ups racing with one token exactly one
//! marks it (SQLite runs write transactions one at a time; PostgreSQL's row lock makes
//! the second UPDATE re-check the row after the first commits, and find it used). A
//! sign-up whose name is taken rolls back, so the invite stays usable.

use chrono::{DateTime, Utc};

use super::types::{from_ms, to_ms, UserRow};
use super::{Store, StoreError, User};

/// An invite as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// Whether the account it creates is an admin.
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When it was used; `None` while it is still open.
    pub used_at: Option<DateTime<Utc>>,
    /// The name of the account it created.
    pub used_by: Option<String>,
}

/// `is_admin, created_at, expires_at, used_at, used_by`.
type InviteRow = (bool, i64, i64, Option<i64>, Option<String>);

impl Invite {
    /// Whether a sign-up may use it at `now`.
    pub fn usable(&self, now: DateTime<Utc>) -> bool {
        self.used_at.is_none() && self.expires_at > now
    }
}

impl Store {
    /// Records a new invite, valid until `expires_at`.
    ///
    /// # Errors
    /// Store failures (a duplicate hash is a `Conflict`).
    pub async fn create_invite(
        &self,
        token_hash: &[u8; 32],
        admin: bool,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.db
            .query(
                "INSERT INTO invites (token_hash, is_admin, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&token_hash[..])
            .bind(admin)
            .bind(to_ms(now))
            .bind(to_ms(expires_at))
            .execute()
            .await
            .map_err(StoreError::conflict_on(|| "invite".to_owned()))?;
        Ok(())
    }

    /// An invite by token hash, used or expired or not.
    ///
    /// # Errors
    /// Store failures.
    pub async fn invite(&self, token_hash: &[u8; 32]) -> Result<Option<Invite>, StoreError> {
        let row: Option<InviteRow> = self
            .db
            .query(
                "SELECT is_admin, created_at, expires_at, used_at, used_by FROM invites \
                 WHERE token_hash = $1",
            )
            .bind(&token_hash[..])
            .fetch_optional()
            .await?;
        Ok(row.map(|(admin, created, expires, used, used_by)| Invite {
            admin,
            created_at: from_ms(created),
            expires_at: from_ms(expires),
            used_at: used.map(from_ms),
            used_by,
        }))
    }

    /// Uses the invite to create user `name` (admin if the invite says so), in one
    /// transaction. `Ok(None)` when the invite is unknown, expired or already used —
    /// by a racing sign-up, too.
    ///
    /// # Errors
    /// `Conflict` when the name is taken (the invite stays unused); store failures.
    pub async fn redeem_invite(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
        name: &str,
        password_hash: &str,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = self.db.begin().await?;
        let claimed = tx
            .query(
                "UPDATE invites SET used_at = $2, used_by = $3 \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
            )
            .bind(&token_hash[..])
            .bind(to_ms(now))
            .bind(name)
            .execute()
            .await?;
        if claimed == 0 {
            return Ok(None);
        }
        let admin: bool = tx
            .query("SELECT is_admin FROM invites WHERE token_hash = $1")
            .bind(&token_hash[..])
            .fetch_scalar()
            .await?;
        let row: UserRow = tx
            .query(
                "INSERT INTO users (name, password_hash, is_admin, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING *",
            )
            .bind(name)
            .bind(password_hash)
            .bind(admin)
            .bind(to_ms(now))
            .fetch_one()
            .await
            .map_err(StoreError::conflict_on(|| format!("user {name:?}")))?;
        tx.commit().await?;
        Ok(Some(row.into()))
    }

    /// Deletes invites that expired before `before` (used ones too: they have done
    /// their work). Returns how many.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_expired_invites(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(self
            .db
            .query("DELETE FROM invites WHERE expires_at <= $1")
            .bind(to_ms(before))
            .execute()
            .await?)
    }
}
