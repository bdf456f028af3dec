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
    /// New connections per minute to this network from the whole cluster (all
    /// nodes and source IPs together, after `burst`), taken from the store's
    /// `connect_budget`; `None`: no cluster-wide rate.
    pub connects_per_minute_total: Option<f64>,
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
            connects_per_minute_total: None,
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

/// One enabled network of a user, with the user's owner: what placement weighs
/// (`cluster::placement`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedNetwork {
    pub user_id: i64,
    /// The user's owner; `None`: nobody yet.
    pub node_id: Option<String>,
    /// `host:port`, for the limits key rule.
    pub addr: String,
    /// The user's name for the network, for the limits key rule.
    pub name: String,
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
    Option<f64>,
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
            connects_per_minute_total: r.8,
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
                 message_burst, sessions_total, updated_at, connects_per_minute_total \
                 FROM network_limits ORDER BY key",
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
                 messages_per_second, message_burst, sessions_total, updated_at, \
                 connects_per_minute_total) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (key) DO UPDATE SET sessions_per_ip = excluded.sessions_per_ip, \
                 connects_per_minute = excluded.connects_per_minute, burst = excluded.burst, \
                 messages_per_second = excluded.messages_per_second, \
                 message_burst = excluded.message_burst, sessions_total = excluded.sessions_total, \
                 updated_at = excluded.updated_at, \
                 connects_per_minute_total = excluded.connects_per_minute_total",
            )
            .bind(l.key.to_lowercase())
            .bind(i64::from(l.sessions_per_ip))
            .bind(l.connects_per_minute)
            .bind(i64::from(l.burst))
            .bind(l.messages_per_second)
            .bind(l.message_burst.map(i64::from))
            .bind(l.sessions_total.map(i64::from))
            .bind(to_ms(l.updated_at))
            .bind(l.connects_per_minute_total)
            .execute()
            .await?;
        Ok(())
    }

    /// Takes one connect token of `key`'s cluster-wide budget: a token bucket of
    /// `burst` tokens refilled at `per_minute`, one row in `connect_budget` updated by
    /// a single atomic statement on the database's clock, so the nodes together never
    /// take more than the rate allows. Returns `None` when a token was taken, else how
    /// long until the next one is due (a retry may still lose it to another node).
    pub async fn take_connect_token(
        &self,
        key: &str,
        per_minute: f64,
        burst: u32,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let burst = f64::from(burst.max(1));
        let per_ms = per_minute / 60_000.0;
        let now = self.db.now();
        self.db
            .query(format!(
                "INSERT INTO connect_budget (key, tokens, refilled_at) VALUES ($1, $2, {now}) \
                 ON CONFLICT (key) DO NOTHING"
            ))
            .bind(key)
            .bind(burst)
            .execute()
            .await?;
        // Tokens now: what was left plus the refill since, at most a burst.
        let level = format!(
            "(CASE WHEN tokens + ({now} - refilled_at) * $2 > $3 THEN $3 \
             ELSE tokens + ({now} - refilled_at) * $2 END)"
        );
        let taken = self
            .db
            .query(format!(
                "UPDATE connect_budget SET tokens = {level} - 1, refilled_at = {now} \
                 WHERE key = $1 AND {level} >= 1"
            ))
            .bind(key)
            .bind(per_ms)
            .bind(burst)
            .execute()
            .await?;
        if taken == 1 {
            return Ok(None);
        }
        let level: Option<f64> = self
            .db
            .query(format!("SELECT {level} FROM connect_budget WHERE key = $1"))
            .bind(key)
            .bind(per_ms)
            .bind(burst)
            .fetch_optional_scalar()
            .await?;
        let missing = (1.0 - level.unwrap_or(0.0)).max(0.0);
        let ms = if per_ms > 0.0 {
            missing / per_ms
        } else {
            60_000.0
        };
        Ok(Some(std::time::Duration::from_millis(
            ms.clamp(10.0, 60_000.0) as u64,
        )))
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

    /// Every enabled network of every user with the user's owner, by user and network.
    pub async fn placed_networks(&self) -> Result<Vec<PlacedNetwork>, StoreError> {
        let rows: Vec<(i64, Option<String>, String, String)> = self
            .db
            .query(
                "SELECT n.user_id, o.node_id, n.addr, n.name FROM networks n \
                 LEFT JOIN user_owners o ON o.user_id = n.user_id \
                 WHERE n.enabled ORDER BY n.user_id, n.id",
            )
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, node_id, addr, name)| PlacedNetwork {
                user_id,
                node_id,
                addr,
                name,
            })
            .collect())
    }

    /// Every user, the most recently active first (by the newest message in any of
    /// their buffers as `buffers.last_message_at` has it, i.e. to within
    /// [`LAST_MESSAGE_AT_STEP_MS`](super::LAST_MESSAGE_AT_STEP_MS), which is fine for an
    /// order of start; users with no backlog last, by name). A restarting node starts
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
