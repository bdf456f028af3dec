//! What the limiter needs from the store: configured per-network limits, and each
//! node's live session counts (so `sessions_total` can cap a network cluster-wide).
//!
//! Both tables are small (one row per configured network; one per node, network and
//! source IP), so every node simply reads them whole every few seconds.

use chrono::{DateTime, Utc};

use super::types::{from_ms, to_ms, User, UserRow};
use super::{Store, StoreError};

/// The limits of one network, as `ferry limits set KEY …` stores them.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkLimits {
    /// Which networks this applies to: a host, a parent domain of hosts, or a network
    /// name (the rule is in `limits::key`). Stored lowercased.
    pub key: String,
    /// Upstream sessions allowed per source IP (the network's clone limit).
    pub sessions_per_ip: u32,
    /// New connections per minute per source IP (GCRA), after `burst`.
    pub connects_per_minute: f64,
    /// Connections allowed back to back before the rate applies (at least 1).
    pub burst: u32,
    /// Outgoing lines per second per connection; `None`: the node's default.
    pub messages_per_second: Option<f64>,
    /// Outgoing lines sent at once before pacing starts; `None`: the node's default.
    pub message_burst: Option<u32>,
    /// Sessions allowed on this network across the whole cluster; `None`: no cap.
    pub sessions_total: Option<u32>,
    pub updated_at: DateTime<Utc>,
}

impl NetworkLimits {
    /// Limits for `key` with the node's defaults for message pacing and no
    /// cluster-wide cap, as of now.
    pub fn new(key: &str, sessions_per_ip: u32, connects_per_minute: f64, burst: u32) -> Self {
        NetworkLimits {
            key: key.to_owned(),
            sessions_per_ip,
            connects_per_minute,
            burst,
            messages_per_second: None,
            message_burst: None,
            sessions_total: None,
            updated_at: Utc::now(),
        }
    }
}

/// One node's live upstream sessions for one (limit key, source IP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionCount {
    pub node_id: String,
    pub key: String,
    /// The bound source address, or `""` when connections are not bound.
    pub source_ip: String,
    pub sessions: u32,
    pub updated_at: DateTime<Utc>,
}

type LimitsRow = (
    String,
    i64,
    f64,
    i64,
    Option<f64>,
    Option<i64>,
    Option<i64>,
    i64,
);

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl From<LimitsRow> for NetworkLimits {
    fn from(r: LimitsRow) -> NetworkLimits {
        NetworkLimits {
            key: r.0,
            sessions_per_ip: to_u32(r.1),
            connects_per_minute: r.2,
            burst: to_u32(r.3),
            messages_per_second: r.4,
            message_burst: r.5.map(to_u32),
            sessions_total: r.6.map(to_u32),
            updated_at: from_ms(r.7),
        }
    }
}

impl Store {
    /// Every configured network limit, by key.
    pub async fn network_limits(&self) -> Result<Vec<NetworkLimits>, StoreError> {
        let rows: Vec<LimitsRow> = self
            .db
            .query(
                "SELECT key, sessions_per_ip, connects_per_minute, burst, messages_per_second, \
                 message_burst, sessions_total, updated_at FROM network_limits ORDER BY key",
            )
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Creates or replaces the limits stored under `limits.key` (lowercased).
    pub async fn set_network_limits(&self, limits: &NetworkLimits) -> Result<(), StoreError> {
        let l = limits;
        self.db
            .query(
                "INSERT INTO network_limits (key, sessions_per_ip, connects_per_minute, burst, \
                 messages_per_second, message_burst, sessions_total, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (key) DO UPDATE SET sessions_per_ip = excluded.sessions_per_ip, \
                 connects_per_minute = excluded.connects_per_minute, burst = excluded.burst, \
                 messages_per_second = excluded.messages_per_second, \
                 message_burst = excluded.message_burst, sessions_total = excluded.sessions_total, \
                 updated_at = excluded.updated_at",
            )
            .bind(l.key.to_lowercase())
            .bind(i64::from(l.sessions_per_ip))
            .bind(l.connects_per_minute)
            .bind(i64::from(l.burst))
            .bind(l.messages_per_second)
            .bind(l.message_burst.map(i64::from))
            .bind(l.sessions_total.map(i64::from))
            .bind(to_ms(l.updated_at))
            .execute()
            .await?;
        Ok(())
    }

    /// Removes the limits under `key`; `false` when there were none.
    pub async fn delete_network_limits(&self, key: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .query("DELETE FROM network_limits WHERE key = $1")
            .bind(key.to_lowercase())
            .execute()
            .await?;
        Ok(n > 0)
    }

    /// Replaces this node's session counts with `counts` (key, source IP, sessions).
    pub async fn report_session_counts(
        &self,
        node_id: &str,
        counts: &[(String, String, u32)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        tx.query("DELETE FROM network_sessions WHERE node_id = $1")
            .bind(node_id)
            .execute()
            .await?;
        for (key, ip, n) in counts {
            tx.query(
                "INSERT INTO network_sessions (node_id, key, source_ip, sessions, updated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(node_id)
            .bind(key)
            .bind(ip)
            .bind(i64::from(*n))
            .bind(to_ms(now))
            .execute()
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every node's reported session counts.
    pub async fn session_counts(&self) -> Result<Vec<SessionCount>, StoreError> {
        let rows: Vec<(String, String, String, i64, i64)> = self
            .db
            .query(
                "SELECT node_id, key, source_ip, sessions, updated_at FROM network_sessions \
                 ORDER BY node_id, key, source_ip",
            )
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|(node_id, key, source_ip, n, at)| SessionCount {
                node_id,
                key,
                source_ip,
                sessions: to_u32(n),
                updated_at: from_ms(at),
            })
            .collect())
    }

    /// Every user, the most recently active first (by the newest message in any of
    /// their buffers; users with no backlog last, by name). A restarting node starts
    /// users in this order so the people most likely to be waiting connect first.
    pub async fn users_by_recent_activity(&self) -> Result<Vec<User>, StoreError> {
        let rows: Vec<UserRow> = self
            .db
            .query(
                "SELECT u.* FROM users u LEFT JOIN ( \
                   SELECT n.user_id, MAX(b.last_message_at) AS last_at \
                   FROM networks n JOIN buffers b ON b.network_id = n.id GROUP BY n.user_id \
                 ) a ON a.user_id = u.id \
                 ORDER BY a.last_at IS NULL, a.last_at DESC, u.name",
            )
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
