// The backend-independent body of `sqlite/cluster.rs` and `postgres/cluster.rs`,
// included by both (`include!`): the SQL is the same on both databases but for
// the clock expression `NOW` each of them defines, and the pool type `Db`.

use super::Db;
use crate::store::types::{
    from_ms, node_state, to_ms, Fence, NetworkId, NodeHealth, NodeRecord, NodeRow, OwnedFingerprint,
    Ownership, Seq, UserId,
};
use crate::store::{expect_one, StoreError};

/// Columns of an [`Ownership`], given `users u LEFT JOIN user_owners o`.
const OWNERSHIP: &str =
    "u.id, u.name, o.node_id, COALESCE(o.epoch, 0), COALESCE(o.updated_at, u.created_at)";

type OwnershipRow = (i64, String, Option<String>, i64, i64);

fn ownership((user_id, user_name, node_id, epoch, updated): OwnershipRow) -> Ownership {
    Ownership {
        user_id,
        user_name,
        node_id,
        epoch,
        updated_at: from_ms(updated),
    }
}

/// `EXISTS` clause true while the fence (`$a` user, `$b` node, `$c` epoch) owns the user.
fn owns(a: u8, b: u8, c: u8) -> String {
    format!(
        "EXISTS (SELECT 1 FROM user_owners WHERE user_id = ${a} AND node_id = ${b} AND epoch = ${c})"
    )
}

impl Db {
    pub(in crate::store) async fn register_node(
        &self,
        n: &NodeRecord,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO nodes (id, admin_url, admin_token, http_addr, irc_addr, version, state, \
             started_at, heartbeat_at, source_ips, schema_version, config_fingerprint, fd_limit, \
             fd_budget, lease_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {NOW}, $9, $10, $11, $12, $13, {NOW} + $14) \
             ON CONFLICT (id) DO UPDATE SET admin_url = excluded.admin_url, \
             admin_token = excluded.admin_token, http_addr = excluded.http_addr, \
             irc_addr = excluded.irc_addr, version = excluded.version, state = excluded.state, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             source_ips = excluded.source_ips, schema_version = excluded.schema_version, \
             config_fingerprint = excluded.config_fingerprint, fd_limit = excluded.fd_limit, \
             fd_budget = excluded.fd_budget, lease_expires_at = excluded.lease_expires_at"
        ))
        .bind(&n.id)
        .bind(&n.admin_url)
        .bind(&n.admin_token)
        .bind(&n.http_addr)
        .bind(&n.irc_addr)
        .bind(&n.version)
        .bind(&n.state)
        .bind(to_ms(n.started_at))
        .bind(n.source_ips.join(","))
        .bind(n.schema_version)
        .bind(&n.config_fingerprint)
        .bind(n.fd_limit)
        .bind(n.fd_budget)
        .bind(lease_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn heartbeat_node(
        &self,
        id: &str,
        h: &NodeHealth,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE nodes SET heartbeat_at = {NOW}, lease_expires_at = {NOW} + $2, users = $3, \
             sessions = $4, sessions_per_network = $5, sessions_per_ip = $6, loop_lag_ms = $7, \
             rss_bytes = $8 WHERE id = $1 AND state <> '{}'",
            node_state::DEAD
        ))
        .bind(id)
        .bind(lease_ms)
        .bind(h.users)
        .bind(h.sessions)
        .bind(serde_json::to_string(&h.sessions_per_network).unwrap_or_default())
        .bind(serde_json::to_string(&h.sessions_per_ip).unwrap_or_default())
        .bind(h.loop_lag_ms)
        .bind(h.rss_bytes)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub(in crate::store) async fn set_node_state(
        &self,
        id: &str,
        state: &str,
    ) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE nodes SET state = $2 WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute(&self.pool)
            .await?;
        expect_one(r.rows_affected(), || format!("node {id:?}"))
    }

    pub(in crate::store) async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows: Vec<NodeRow> = sqlx::query_as("SELECT * FROM nodes ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(in crate::store) async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn mark_lapsed_nodes_dead(
        &self,
        margin_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "UPDATE nodes SET state = '{dead}' WHERE state <> '{dead}' \
             AND lease_expires_at + $1 < {NOW} RETURNING id",
            dead = node_state::DEAD
        ))
        .bind(margin_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn live_active_nodes(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM nodes WHERE state = '{}' AND lease_expires_at > {NOW} ORDER BY id",
            node_state::ACTIVE
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn owner(
        &self,
        user: UserId,
    ) -> Result<Option<Ownership>, StoreError> {
        let row: Option<OwnershipRow> = sqlx::query_as(&format!(
            "SELECT {OWNERSHIP} FROM users u LEFT JOIN user_owners o ON o.user_id = u.id \
             WHERE u.id = $1"
        ))
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(ownership))
    }

    pub(in crate::store) async fn assign_user(
        &self,
        user: UserId,
        node: Option<&str>,
        expected: i64,
    ) -> Result<Option<i64>, StoreError> {
        // A user without an owner row has epoch 0.
        let updated: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE user_owners SET node_id = $2, epoch = epoch + 1, updated_at = {NOW} \
             WHERE user_id = $1 AND epoch = $3 RETURNING epoch"
        ))
        .bind(user)
        .bind(node)
        .bind(expected)
        .fetch_optional(&self.pool)
        .await?;
        if updated.is_some() || expected != 0 {
            return Ok(updated);
        }
        Ok(sqlx::query_scalar(&format!(
            "INSERT INTO user_owners (user_id, node_id, epoch, updated_at) \
             SELECT $1, $2, 1, {NOW} WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) \
             ON CONFLICT (user_id) DO NOTHING RETURNING epoch"
        ))
        .bind(user)
        .bind(node)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn owned_users(
        &self,
        node: &str,
    ) -> Result<Vec<Ownership>, StoreError> {
        let rows: Vec<OwnershipRow> = sqlx::query_as(&format!(
            "SELECT {OWNERSHIP} FROM users u JOIN user_owners o ON o.user_id = u.id \
             WHERE o.node_id = $1 ORDER BY u.id"
        ))
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ownership).collect())
    }

    pub(in crate::store) async fn ownerships(&self) -> Result<Vec<Ownership>, StoreError> {
        let rows: Vec<OwnershipRow> = sqlx::query_as(&format!(
            "SELECT {OWNERSHIP} FROM users u LEFT JOIN user_owners o ON o.user_id = u.id ORDER BY u.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ownership).collect())
    }

    pub(in crate::store) async fn owned_fingerprint(
        &self,
        node: &str,
    ) -> Result<OwnedFingerprint, StoreError> {
        // CAST: PostgreSQL sums BIGINT into NUMERIC.
        let (count, epochs, users): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(epoch), 0) AS BIGINT), \
             CAST(COALESCE(SUM(user_id), 0) AS BIGINT) FROM user_owners WHERE node_id = $1",
        )
        .bind(node)
        .fetch_one(&self.pool)
        .await?;
        Ok(OwnedFingerprint {
            count,
            epochs,
            users,
        })
    }

    pub(in crate::store) async fn adoption_pending(&self, margin_ms: i64) -> Result<bool, StoreError> {
        // Both through `user_owners_node`: unowned rows, and the rows of the (few)
        // nodes that are gone, dead, drained or lapsed.
        Ok(sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM user_owners WHERE node_id IS NULL) \
             OR EXISTS (SELECT 1 FROM user_owners WHERE node_id IN ( \
               SELECT id FROM nodes WHERE state IN ('{}', '{}') OR lease_expires_at + $1 < {NOW}))",
            node_state::DEAD,
            node_state::DRAINED
        ))
        .bind(margin_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn adoptable_users(
        &self,
        margin_ms: i64,
    ) -> Result<Vec<Ownership>, StoreError> {
        let rows: Vec<OwnershipRow> = sqlx::query_as(&format!(
            "SELECT {OWNERSHIP} FROM users u LEFT JOIN user_owners o ON o.user_id = u.id \
             LEFT JOIN nodes n ON n.id = o.node_id \
             WHERE o.node_id IS NULL OR n.id IS NULL OR n.state IN ('{}', '{}') \
             OR n.lease_expires_at + $1 < {NOW} ORDER BY u.id",
            node_state::DEAD,
            node_state::DRAINED
        ))
        .bind(margin_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ownership).collect())
    }

    pub(in crate::store) async fn release_node_users(&self, node: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE user_owners SET node_id = NULL, epoch = epoch + 1, updated_at = {NOW} \
             WHERE node_id = $1"
        ))
        .bind(node)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub(in crate::store) async fn set_channel_fenced(
        &self,
        f: &Fence,
        network: NetworkId,
        name: &[u8],
        key: &[u8],
        joined: bool,
        chan_key: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "INSERT INTO buffers (network_id, key, name, kind, joined, chan_key) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE {} \
             ON CONFLICT (network_id, key) DO UPDATE \
             SET name = excluded.name, joined = excluded.joined, chan_key = excluded.chan_key",
            owns(7, 8, 9)
        ))
        .bind(network)
        .bind(key)
        .bind(name)
        .bind(crate::store::BufferKind::of(name).as_str())
        .bind(joined)
        .bind(chan_key)
        .bind(f.user)
        .bind(&*f.node)
        .bind(f.epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(in crate::store) async fn set_network_nick_fenced(
        &self,
        f: &Fence,
        network: NetworkId,
        nick: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE networks SET nick = $2 WHERE id = $1 AND {}",
            owns(3, 4, 5)
        ))
        .bind(network)
        .bind(nick)
        .bind(f.user)
        .bind(&*f.node)
        .bind(f.epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(in crate::store) async fn set_client_position_fenced(
        &self,
        f: &Fence,
        network: NetworkId,
        client: &str,
        seq: Seq,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "INSERT INTO client_positions (network_id, client, seq) SELECT $1, $2, $3 WHERE {} \
             ON CONFLICT (network_id, client) DO UPDATE SET seq = excluded.seq \
             WHERE excluded.seq > client_positions.seq",
            owns(4, 5, 6)
        ))
        .bind(network)
        .bind(client)
        .bind(seq)
        .bind(f.user)
        .bind(&*f.node)
        .bind(f.epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }
}
