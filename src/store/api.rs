//! What the HTTP API needs from the store beyond the backlog: login sessions and
//! per-buffer unread and highlight counts.
//!
//! Sessions are keyed by the SHA-256 of their bearer token; the token itself is never
//! stored. They expire after a period of disuse (sliding): each use pushes `expires_at`
//! forward, at most once a minute so that reading does not mean writing, but never
//! past `created_at` + the absolute lifetime the caller gives.

use chrono::{DateTime, Duration, Utc};

use super::types::{from_ms, to_ms, NetworkId, UserId};
use super::{not_found_on_fk, Store, StoreError};

/// A login session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Unread and highlight counts of one buffer (buffers with nothing unread are omitted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadCount {
    /// The buffer's casefolded name.
    pub key: Vec<u8>,
    /// Messages after the read marker.
    pub unread: i64,
    /// Of those, PRIVMSG/ACTION/NOTICE from someone else: what a person counts as
    /// unread (not joins, parts, modes or their own lines).
    pub chat: i64,
    /// Of those, PRIVMSG/ACTION/NOTICE from someone else whose text contains the nick
    /// (case-insensitively).
    pub highlights: i64,
}

/// How often a session's `last_used_at` is written at most.
const TOUCH_INTERVAL: Duration = Duration::milliseconds(60_000);

impl Store {
    /// Records a new session for `user`, valid for `ttl`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.db
            .query(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_used_at, expires_at) \
                 VALUES ($1, $2, $3, $3, $4)",
            )
            .bind(&token_hash[..])
            .bind(user)
            .bind(to_ms(now))
            .bind(to_ms(now + ttl))
            .execute()
            .await
            .map_err(not_found_on_fk(|| format!("user {user}")))?;
        Ok(())
    }

    /// The user of a live session, sliding its expiry to `now + ttl` but never past
    /// `created_at + lifetime`. `None` when the session does not exist, has expired, or
    /// is older than `lifetime`.
    pub async fn use_session(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
        ttl: Duration,
        lifetime: Duration,
    ) -> Result<Option<UserId>, StoreError> {
        let Some(s) = self.session(token_hash).await? else {
            return Ok(None);
        };
        let end = s.created_at + lifetime;
        if s.expires_at <= now || end <= now {
            return Ok(None);
        }
        if now - s.last_used_at >= TOUCH_INTERVAL {
            self.db
                .query(
                    "UPDATE sessions SET last_used_at = $2, expires_at = $3 WHERE token_hash = $1",
                )
                .bind(&token_hash[..])
                .bind(to_ms(now))
                .bind(to_ms((now + ttl).min(end)))
                .execute()
                .await?;
        }
        Ok(Some(s.user_id))
    }

    /// A session by token hash, expired or not.
    pub async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        let row: Option<(i64, i64, i64, i64)> = self
            .db
            .query(
                "SELECT user_id, created_at, last_used_at, expires_at FROM sessions \
                 WHERE token_hash = $1",
            )
            .bind(&token_hash[..])
            .fetch_optional()
            .await?;
        Ok(row.map(|(user_id, created, used, expires)| Session {
            user_id,
            created_at: from_ms(created),
            last_used_at: from_ms(used),
            expires_at: from_ms(expires),
        }))
    }

    /// Revokes a session; revoking a missing one is not an error.
    pub async fn delete_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.db
            .query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(&token_hash[..])
            .execute()
            .await?;
        Ok(())
    }

    /// Revokes every session of `user` but `keep` (a password change); returns how many.
    pub async fn delete_user_sessions(
        &self,
        user: UserId,
        keep: Option<&[u8; 32]>,
    ) -> Result<u64, StoreError> {
        Ok(self
            .db
            .query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
            .bind(user)
            .bind(keep.map_or(&[][..], |k| &k[..]))
            .execute()
            .await?)
    }

    /// Deletes sessions that expired before `now`; returns how many.
    pub async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(self
            .db
            .query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(to_ms(now))
            .execute()
            .await?)
    }

    /// Unread and highlight counts of the buffers of `network` (which must belong to
    /// `user`) that have messages after their read marker. `nick` is the user's current
    /// nick there; an empty nick highlights nothing.
    pub async fn unread_counts(
        &self,
        user: UserId,
        network: NetworkId,
        nick: &str,
    ) -> Result<Vec<UnreadCount>, StoreError> {
        // Per-user rows and shared events counted apart (each through its buffer's
        // range of its own index), then added up per buffer.
        let mut counts: Vec<UnreadCount> = Vec::new();
        for table in super::backlog::LINE_SOURCES {
            for c in self.unread_counts_of(table, user, network, nick).await? {
                match counts.iter_mut().find(|x| x.key == c.key) {
                    Some(x) => {
                        x.unread += c.unread;
                        x.chat += c.chat;
                        x.highlights += c.highlights;
                    }
                    None => counts.push(c),
                }
            }
        }
        Ok(counts)
    }

    /// [`Store::unread_counts`] of one source of lines.
    async fn unread_counts_of(
        &self,
        table: &str,
        user: UserId,
        network: NetworkId,
        nick: &str,
    ) -> Result<Vec<UnreadCount>, StoreError> {
        let sql = format!(
            "SELECT b.key, COUNT(*) AS unread, \
             COALESCE(SUM(CASE WHEN m.command IN ('PRIVMSG', 'ACTION', 'NOTICE') \
                 AND lower(m.sender) <> lower($3) THEN 1 ELSE 0 END), 0) AS chat, \
             COALESCE(SUM(CASE WHEN m.command IN ('PRIVMSG', 'ACTION', 'NOTICE') \
                 AND $3 <> '' AND {contains}(lower(bo.text), lower($3)) > 0 \
                 AND lower(m.sender) <> lower($3) THEN 1 ELSE 0 END), 0) AS highlights \
             FROM buffers b JOIN networks n ON n.id = b.network_id \
             JOIN {table} m ON m.buffer_id = b.id AND m.seq > b.read_marker \
             JOIN bodies bo ON bo.id = m.body_id \
             WHERE b.network_id = $2 AND n.user_id = $1 \
             GROUP BY b.id, b.key",
            contains = self.db.contains()
        );
        let rows: Vec<(Vec<u8>, i64, i64, i64)> = self
            .db
            .query(sql)
            .bind(user)
            .bind(network)
            .bind(nick)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, unread, chat, highlights)| UnreadCount {
                key,
                unread,
                chat,
                highlights: if nick.is_empty() { 0 } else { highlights },
            })
            .collect())
    }
}
