//! A user's preferences the session acts on (migration 0011): auto-away (on or off,
//! the user's own away text) and detached channels (a channel the user stays in and
//! logs without its lines reaching attached clients, and what attaches it again).

use super::types::{AwaySettings, ReattachOn, UserId};
use super::{expect_one, Store, StoreError};
use crate::store::NetworkId;

impl Store {
    /// The user's auto-away settings.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn away_settings(&self, user: UserId) -> Result<AwaySettings, StoreError> {
        let row: Option<(bool, Option<String>)> = self
            .db
            .query("SELECT auto_away, away_message FROM users WHERE id = $1")
            .bind(user)
            .fetch_optional()
            .await?;
        let (auto_away, away_message) =
            row.ok_or_else(|| StoreError::NotFound(format!("user {user}")))?;
        Ok(AwaySettings {
            auto_away,
            away_message,
        })
    }

    /// Stores the user's auto-away settings.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn set_away_settings(
        &self,
        user: UserId,
        settings: &AwaySettings,
    ) -> Result<(), StoreError> {
        let n = self
            .db
            .query("UPDATE users SET auto_away = $2, away_message = $3 WHERE id = $1")
            .bind(user)
            .bind(settings.auto_away)
            .bind(settings.away_message.as_deref())
            .execute()
            .await?;
        expect_one(n, || format!("user {user}"))
    }

    /// Marks a channel's buffer detached or attached (and, when given, what attaches it
    /// by itself). The buffer must exist (a channel the user is or was in).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the network has no buffer with this key.
    pub async fn set_detached(
        &self,
        network: NetworkId,
        key: &[u8],
        detached: bool,
        reattach_on: Option<ReattachOn>,
    ) -> Result<(), StoreError> {
        let n = self
            .db
            .query(
                "UPDATE buffers SET detached = $3, reattach_on = COALESCE($4, reattach_on) \
                 WHERE network_id = $1 AND key = $2",
            )
            .bind(network)
            .bind(key)
            .bind(detached)
            .bind(reattach_on.map(ReattachOn::as_str))
            .execute()
            .await?;
        expect_one(n, || format!("channel {}", String::from_utf8_lossy(key)))
    }
}
