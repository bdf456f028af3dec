//! What Web Push needs from the store: the cluster's VAPID key, each user's push
//! subscriptions, their push settings and muted buffers.
//!
//! The store keeps these as plain text and bytes; `push` checks and parses them. A
//! subscription belongs to one user: every query names the user, and the same
//! endpoint registered by two users is two rows.

use chrono::{DateTime, Utc};

use super::types::{from_ms, now_ms, NetworkId, UserId};
use super::{not_found_on_fk, Store, StoreError};

/// A push subscription as stored (keys base64url, as the client sent them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    /// The push carries the IRC line (`WEBPUSH REGISTER`), not Ferry's JSON.
    pub irc: bool,
    pub created_at: DateTime<Utc>,
}

/// A user's push choices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushSettings {
    /// Extra words that push (besides the nick), trimmed, none blank.
    pub keywords: Vec<String>,
    /// Whether an attached IRC client counts as the user being active (no pushes
    /// while one is attached).
    pub irc_is_active: bool,
}

impl Store {
    /// The cluster's VAPID private key: the stored one, else `generate()`'s, stored
    /// first. Nodes racing to make it agree: only the first insert lands, and every
    /// node returns what is stored.
    pub async fn vapid_key(&self, generate: impl FnOnce() -> String) -> Result<String, StoreError> {
        if let Some(key) = self.stored_vapid_key().await? {
            return Ok(key);
        }
        self.db
            .query(
                "INSERT INTO push_vapid (id, private_key, created_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(generate())
            .bind(now_ms())
            .execute()
            .await?;
        self.stored_vapid_key()
            .await?
            .ok_or_else(|| StoreError::NotFound("VAPID key".into()))
    }

    async fn stored_vapid_key(&self) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = self
            .db
            .query("SELECT private_key FROM push_vapid WHERE id = 1")
            .fetch_optional()
            .await?;
        Ok(row.map(|(k,)| k))
    }

    /// Adds a subscription of `user`, or replaces the keys (and format) of the one
    /// with the same endpoint (a browser renews its keys). Returns whether it is new.
    /// `irc`: pushes carry the IRC line (`soju.im/webpush`) instead of JSON.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn add_push_subscription(
        &self,
        user: UserId,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        irc: bool,
    ) -> Result<bool, StoreError> {
        let existed = self
            .push_subscriptions(user)
            .await?
            .iter()
            .any(|s| s.endpoint == endpoint);
        self.db
            .query(
                "INSERT INTO push_subscriptions \
                 (user_id, endpoint, p256dh, auth, format, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_id, endpoint) DO UPDATE \
                 SET p256dh = excluded.p256dh, auth = excluded.auth, format = excluded.format",
            )
            .bind(user)
            .bind(endpoint)
            .bind(p256dh)
            .bind(auth)
            .bind(if irc { "irc" } else { "json" })
            .bind(now_ms())
            .execute()
            .await
            .map_err(not_found_on_fk(|| format!("user {user}")))?;
        Ok(!existed)
    }

    /// Removes `user`'s subscription with this endpoint; returns whether there was one.
    pub async fn delete_push_subscription(
        &self,
        user: UserId,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .db
            .query("DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint = $2")
            .bind(user)
            .bind(endpoint)
            .execute()
            .await?;
        Ok(n > 0)
    }

    /// `user`'s subscriptions, oldest first.
    pub async fn push_subscriptions(
        &self,
        user: UserId,
    ) -> Result<Vec<StoredSubscription>, StoreError> {
        let rows: Vec<(String, String, String, String, i64)> = self
            .db
            .query(
                "SELECT endpoint, p256dh, auth, format, created_at FROM push_subscriptions \
                 WHERE user_id = $1 ORDER BY id",
            )
            .bind(user)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(endpoint, p256dh, auth, format, created)| StoredSubscription {
                    endpoint,
                    p256dh,
                    auth,
                    irc: format == "irc",
                    created_at: from_ms(created),
                },
            )
            .collect())
    }

    /// Subscriptions of every user, for `/metrics`.
    pub async fn push_subscription_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = self
            .db
            .query("SELECT COUNT(*) FROM push_subscriptions")
            .fetch_one()
            .await?;
        Ok(n)
    }

    /// `user`'s push settings (the defaults when never set).
    pub async fn push_settings(&self, user: UserId) -> Result<PushSettings, StoreError> {
        let row: Option<(String, bool)> = self
            .db
            .query("SELECT keywords, irc_is_active FROM push_settings WHERE user_id = $1")
            .bind(user)
            .fetch_optional()
            .await?;
        Ok(
            row.map_or_else(PushSettings::default, |(keywords, irc_is_active)| {
                PushSettings {
                    keywords: keywords.lines().map(str::to_owned).collect(),
                    irc_is_active,
                }
            }),
        )
    }

    /// Replaces `user`'s push settings. Keywords are trimmed; blank ones and line
    /// breaks inside one are dropped (a keyword is one line).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn set_push_settings(
        &self,
        user: UserId,
        settings: &PushSettings,
    ) -> Result<(), StoreError> {
        let keywords: Vec<&str> = settings
            .keywords
            .iter()
            .flat_map(|k| k.lines())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        self.db
            .query(
                "INSERT INTO push_settings (user_id, keywords, irc_is_active) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE \
                 SET keywords = excluded.keywords, irc_is_active = excluded.irc_is_active",
            )
            .bind(user)
            .bind(keywords.join("\n"))
            .bind(settings.irc_is_active)
            .execute()
            .await
            .map_err(not_found_on_fk(|| format!("user {user}")))?;
        Ok(())
    }

    /// Mutes or unmutes the buffer with casefolded name `key` on `network`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such network.
    pub async fn set_push_muted(
        &self,
        network: NetworkId,
        key: &[u8],
        muted: bool,
    ) -> Result<(), StoreError> {
        let sql = if muted {
            "INSERT INTO push_mutes (network_id, buffer_key) VALUES ($1, $2) \
             ON CONFLICT (network_id, buffer_key) DO NOTHING"
        } else {
            "DELETE FROM push_mutes WHERE network_id = $1 AND buffer_key = $2"
        };
        self.db
            .query(sql)
            .bind(network)
            .bind(key)
            .execute()
            .await
            .map_err(not_found_on_fk(|| format!("network {network}")))?;
        Ok(())
    }

    /// The muted buffers of `user`, as (network, casefolded name).
    pub async fn push_mutes(&self, user: UserId) -> Result<Vec<(NetworkId, Vec<u8>)>, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT m.network_id, m.buffer_key FROM push_mutes m \
                 JOIN networks n ON n.id = m.network_id WHERE n.user_id = $1 \
                 ORDER BY m.network_id, m.buffer_key",
            )
            .bind(user)
            .fetch_all()
            .await?)
    }
}
