//! What cluster mode needs from the store: node records with leases, user ownership
//! with epochs (fencing tokens), and fenced writes for user actors.
//!
//! - `nodes`: one row per node, with its lease. On PostgreSQL `lease_expires_at` is
//!   computed from the database's `now()`, so node clocks do not matter; on SQLite (one
//!   node) from the node's clock.
//! - `user_owners(user_id, node_id, epoch)`: who runs each user. [`Store::assign_user`]
//!   is a compare-and-set on the epoch and bumps it, so two nodes can never both win
//!   the same user.
//! - Fenced writes (`*_fenced`, [`Store::insert_messages_fenced`]) check the owner row in
//!   the same statement or transaction, so a node that lost a user cannot write for it.

use std::time::Duration;

use super::backend::Query;
use super::backlog::LAST_SEQ;
use super::types::{
    from_ms, node_state, to_ms, BufferKind, Fence, NetworkId, NodeHealth, NodeRecord, NodeRow,
    OwnedFingerprint, Ownership, ReattachOn, Seq, UserId,
};
use super::{expect_one, Store, StoreError};

/// Columns of an [`Ownership`], given `users u LEFT JOIN user_owners o`.
/// Ids reserved above a user's newest stored line when a node takes the user over
/// without a release (2^32: more lines than any outage buffer holds; a user can be
/// failed over two million times before ids pass 2^53, the web client's limit).
pub const SEQ_RESERVE: i64 = 1 << 32;

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

/// A client's position (`$1` network, `$2` client, `$3` seq), moving only forward,
/// fenced by `$4`–`$6` ([`owns`]). A network deleted since its client noted the
/// position has nothing to keep: the row is skipped like a fenced one, never a
/// foreign-key error that would fail the rest of a batch.
fn position_upsert() -> String {
    format!(
        "INSERT INTO client_positions (network_id, client, seq) \
         SELECT $1, $2, $3 WHERE {} AND EXISTS (SELECT 1 FROM networks WHERE id = $1) \
         ON CONFLICT (network_id, client) DO UPDATE SET seq = excluded.seq \
         WHERE excluded.seq > client_positions.seq",
        owns(4, 5, 6)
    )
}

/// Runs a fenced write whose last three parameters are the fence (see [`owns`]);
/// false when it wrote nothing (fenced).
async fn fenced(q: Query<'_>, fence: &Fence) -> Result<bool, StoreError> {
    let n = q
        .bind(fence.user)
        .bind(&*fence.node)
        .bind(fence.epoch)
        .execute()
        .await?;
    Ok(n > 0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    // ---- nodes ----

    /// Creates or replaces the node record (state, addresses, capacity); sets its
    /// heartbeat to now and its lease to now + `lease`.
    pub async fn register_node(&self, n: &NodeRecord, lease: Duration) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO nodes (id, admin_url, admin_token, http_addr, irc_addr, version, state, \
             started_at, heartbeat_at, source_ips, schema_version, config_fingerprint, fd_limit, \
             fd_budget, lease_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, $9, $10, $11, $12, $13, {now} + $14) \
             ON CONFLICT (id) DO UPDATE SET admin_url = excluded.admin_url, \
             admin_token = excluded.admin_token, http_addr = excluded.http_addr, \
             irc_addr = excluded.irc_addr, version = excluded.version, state = excluded.state, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             source_ips = excluded.source_ips, schema_version = excluded.schema_version, \
             config_fingerprint = excluded.config_fingerprint, fd_limit = excluded.fd_limit, \
             fd_budget = excluded.fd_budget, lease_expires_at = excluded.lease_expires_at",
            now = self.db.now()
        );
        self.db
            .query(sql)
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
            .bind(ms(lease))
            .execute()
            .await?;
        Ok(())
    }

    /// Renews the node's lease (now + `lease`) and publishes its health. Returns false
    /// when the node is not registered or was declared `dead`: it must stop everything
    /// and register again.
    pub async fn heartbeat_node(
        &self,
        id: &str,
        health: &NodeHealth,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE nodes SET heartbeat_at = {now}, lease_expires_at = {now} + $2, users = $3, \
             sessions = $4, sessions_per_network = $5, sessions_per_ip = $6, loop_lag_ms = $7, \
             rss_bytes = $8, key_load = $9 WHERE id = $1 AND state <> '{dead}'",
            now = self.db.now(),
            dead = node_state::DEAD
        );
        let n = self
            .db
            .query(sql)
            .bind(id)
            .bind(ms(lease))
            .bind(health.users)
            .bind(health.sessions)
            .bind(serde_json::to_string(&health.sessions_per_network).unwrap_or_default())
            .bind(serde_json::to_string(&health.sessions_per_ip).unwrap_or_default())
            .bind(health.loop_lag_ms)
            .bind(health.rss_bytes)
            .bind(serde_json::to_string(&health.key_load).unwrap_or_default())
            .execute()
            .await?;
        Ok(n == 1)
    }

    /// Sets a node's state (`active`, `draining`, `drained`, `dead`).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the node is not registered.
    pub async fn set_node_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        let n = self
            .db
            .query("UPDATE nodes SET state = $2 WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute()
            .await?;
        expect_one(n, || format!("node {id:?}"))
    }

    /// All registered nodes, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows: Vec<NodeRow> = self
            .db
            .query("SELECT * FROM nodes ORDER BY id")
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        self.db
            .query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute()
            .await?;
        Ok(())
    }

    /// The nodes (not `dead`) whose last heartbeat is older than half their lease, by
    /// the database's clock: the ones a failover round asks whether they fenced
    /// (`server::partition`), starting well before their lease runs out.
    pub async fn suspect_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM nodes WHERE state <> '{dead}' \
             AND 2 * {now} > heartbeat_at + lease_expires_at ORDER BY id",
            dead = node_state::DEAD,
            now = self.db.now()
        );
        let rows: Vec<NodeRow> = self.db.query(sql).fetch_all().await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Ids of the nodes (not `dead`) whose lease ran out more than `margin` ago, by
    /// the database's clock.
    pub async fn lapsed_nodes(&self, margin: Duration) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT id FROM nodes WHERE state <> '{dead}' AND lease_expires_at + $1 < {now} \
             ORDER BY id",
            dead = node_state::DEAD,
            now = self.db.now()
        );
        Ok(self.db.query(sql).bind(ms(margin)).fetch_column().await?)
    }

    /// Marks node `id` `dead` if its lease is still the one the caller saw
    /// (`lease_expires_at`, as read from [`Store::nodes`]) and ran out more than
    /// `margin` ago: a compare-and-set, so a node that renewed or registered again
    /// since is left alone. True when it marked it; its users are then adoptable.
    pub async fn mark_node_dead(
        &self,
        id: &str,
        lease_expires_at: chrono::DateTime<chrono::Utc>,
        margin: Duration,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE nodes SET state = '{dead}' WHERE id = $1 AND state <> '{dead}' \
             AND lease_expires_at = $2 AND lease_expires_at + $3 < {now}",
            dead = node_state::DEAD,
            now = self.db.now()
        );
        let n = self
            .db
            .query(sql)
            .bind(id)
            .bind(to_ms(lease_expires_at))
            .bind(ms(margin))
            .execute()
            .await?;
        Ok(n == 1)
    }

    /// Ids of the nodes whose lease is live now (by the database's clock) and that are
    /// `active`: the nodes that may take users.
    pub async fn live_active_nodes(&self) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT id FROM nodes WHERE state = '{active}' AND lease_expires_at > {now} \
             ORDER BY id",
            active = node_state::ACTIVE,
            now = self.db.now()
        );
        Ok(self.db.query(sql).fetch_column().await?)
    }

    /// Whether node `id` is registered, not `dead`, and its lease is live now (by the
    /// database's clock): a running node, whose id nobody else may take and whose
    /// record must not be removed.
    pub async fn node_is_live(&self, id: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND state <> '{dead}' \
             AND lease_expires_at > {now})",
            dead = node_state::DEAD,
            now = self.db.now()
        );
        Ok(self.db.query(sql).bind(id).fetch_scalar().await?)
    }

    // ---- ownership ----

    /// The owner row of a user; `None` if there is no such user.
    pub async fn owner(&self, user: UserId) -> Result<Option<Ownership>, StoreError> {
        let row: Option<OwnershipRow> = self
            .db
            .query(format!(
                "SELECT {OWNERSHIP} FROM users u LEFT JOIN user_owners o ON o.user_id = u.id \
                 WHERE u.id = $1"
            ))
            .bind(user)
            .fetch_optional()
            .await?;
        Ok(row.map(ownership))
    }

    /// Compare-and-set: gives `user` to `node` (`None`: nobody) if its epoch is still
    /// `expected_epoch`, bumping the epoch. Returns the new epoch, or `None` when
    /// someone else changed the owner first (or the user is gone).
    pub async fn assign_user(
        &self,
        user: UserId,
        node: Option<&str>,
        expected_epoch: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.change_owner(user, node, expected_epoch, false).await
    }

    /// Failover's compare-and-set: [`Store::assign_user`] to `node`, and when the user
    /// is taken from another node that still holds it (that node did not release it:
    /// it crashed, or was cut off from the store), the user's `seq_floor` is set: the
    /// [`SEQ_RESERVE`] ids above the newest stored line stay for the lines the old
    /// owner may still hold (its outage spill file, written back at its next start
    /// with their ids, see `outage::replay`), and the new owner numbers from the
    /// floor ([`Store::seq_base`]). Planned moves release or hand over and reserve
    /// nothing, so their ids stay dense.
    pub async fn adopt_user(
        &self,
        user: UserId,
        node: &str,
        expected_epoch: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.change_owner(user, Some(node), expected_epoch, true)
            .await
    }

    async fn change_owner(
        &self,
        user: UserId,
        node: Option<&str>,
        expected_epoch: i64,
        reserve: bool,
    ) -> Result<Option<i64>, StoreError> {
        let now = self.db.now();
        let floor = if reserve {
            format!(
                ", seq_floor = CASE WHEN node_id IS NOT NULL AND node_id <> $2 \
                 THEN COALESCE({LAST_SEQ}, 0) + {SEQ_RESERVE} \
                 ELSE seq_floor END"
            )
        } else {
            String::new()
        };
        let updated: Option<i64> = self
            .db
            .query(format!(
                "UPDATE user_owners SET node_id = $2, epoch = epoch + 1, updated_at = {now}{floor} \
                 WHERE user_id = $1 AND epoch = $3 RETURNING epoch"
            ))
            .bind(user)
            .bind(node)
            .bind(expected_epoch)
            .fetch_optional_scalar()
            .await?;
        // A user without an owner row has epoch 0 (and nobody held it: no reservation).
        if updated.is_some() || expected_epoch != 0 {
            return Ok(updated);
        }
        Ok(self
            .db
            .query(format!(
                "INSERT INTO user_owners (user_id, node_id, epoch, updated_at) \
                 SELECT $1, $2, 1, {now} WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) \
                 ON CONFLICT (user_id) DO NOTHING RETURNING epoch"
            ))
            .bind(user)
            .bind(node)
            .fetch_optional_scalar()
            .await?)
    }

    /// The user's reserved id floor (0: none; see [`Store::adopt_user`]).
    pub async fn seq_floor(&self, user: UserId) -> Result<Seq, StoreError> {
        let v: Option<i64> = self
            .db
            .query("SELECT seq_floor FROM user_owners WHERE user_id = $1")
            .bind(user)
            .fetch_optional_scalar()
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// The users a node owns, with the epoch it must write with.
    pub async fn owned_users(&self, node: &str) -> Result<Vec<Ownership>, StoreError> {
        let rows: Vec<OwnershipRow> = self
            .db
            .query(format!(
                "SELECT {OWNERSHIP} FROM users u JOIN user_owners o ON o.user_id = u.id \
                 WHERE o.node_id = $1 ORDER BY u.id"
            ))
            .bind(node)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(ownership).collect())
    }

    /// A cheap summary of the users a node owns, to tell whether they changed since
    /// the last full [`Store::owned_users`] without reading them all.
    pub async fn owned_fingerprint(&self, node: &str) -> Result<OwnedFingerprint, StoreError> {
        // CAST: PostgreSQL sums BIGINT into NUMERIC.
        let (count, epochs, users): (i64, i64, i64) = self
            .db
            .query(
                "SELECT COUNT(*), CAST(COALESCE(SUM(epoch), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(user_id), 0) AS BIGINT) FROM user_owners WHERE node_id = $1",
            )
            .bind(node)
            .fetch_one()
            .await?;
        Ok(OwnedFingerprint {
            count,
            epochs,
            users,
        })
    }

    /// Whether a failover round has obvious work: a user owned by nobody, or by a node
    /// that is dead or drained. Cheap (index lookups); it does not see users without
    /// an owner row or owned by an unregistered node, which only the full
    /// [`Store::adoptable_users`] finds. A node whose lease merely lapsed is not
    /// adopted from until a failover round declared it dead ([`Store::mark_node_dead`]).
    pub async fn adoption_pending(&self) -> Result<bool, StoreError> {
        // Both through `user_owners_node`: unowned rows, and the rows of the (few)
        // nodes that are dead or drained.
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM user_owners WHERE node_id IS NULL) \
             OR EXISTS (SELECT 1 FROM user_owners WHERE node_id IN ( \
               SELECT id FROM nodes WHERE state IN ('{dead}', '{drained}')))",
            dead = node_state::DEAD,
            drained = node_state::DRAINED,
        );
        Ok(self.db.query(sql).fetch_scalar().await?)
    }

    /// The enabled networks of the users `node` owns, as (address, the user's name for
    /// the network): what its sessions are, for a migration plan to key them by the
    /// limiter's rule (which needs the name as well as the host).
    pub async fn owned_networks(&self, node: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT n.addr, n.name FROM networks n \
                 JOIN user_owners o ON o.user_id = n.user_id \
                 WHERE o.node_id = $1 AND n.enabled ORDER BY n.id",
            )
            .bind(node)
            .fetch_all()
            .await?)
    }

    /// Every network as (address, the user's name for it), for checking that a limits
    /// key applies to some network.
    pub async fn network_addrs(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .db
            .query("SELECT addr, name FROM networks ORDER BY id")
            .fetch_all()
            .await?)
    }

    /// Every owner row, by user id.
    pub async fn ownerships(&self) -> Result<Vec<Ownership>, StoreError> {
        let rows: Vec<OwnershipRow> = self
            .db
            .query(format!(
                "SELECT {OWNERSHIP} FROM users u LEFT JOIN user_owners o ON o.user_id = u.id \
                 ORDER BY u.id"
            ))
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(ownership).collect())
    }

    /// Users that need a new owner: nobody owns them, or their owner is not registered
    /// or is `dead`/`drained`. A node whose lease lapsed keeps its users until a
    /// failover round declares it dead ([`Store::mark_node_dead`]): only then may
    /// nobody be running them.
    pub async fn adoptable_users(&self) -> Result<Vec<Ownership>, StoreError> {
        let sql = format!(
            "SELECT {OWNERSHIP} FROM users u LEFT JOIN user_owners o ON o.user_id = u.id \
             LEFT JOIN nodes n ON n.id = o.node_id \
             WHERE o.node_id IS NULL OR n.id IS NULL OR n.state IN ('{dead}', '{drained}') \
             ORDER BY u.id",
            dead = node_state::DEAD,
            drained = node_state::DRAINED,
        );
        let rows: Vec<OwnershipRow> = self.db.query(sql).fetch_all().await?;
        Ok(rows.into_iter().map(ownership).collect())
    }

    /// Gives up every user `node` owns (clean shutdown): owner NULL, epoch + 1, so other
    /// nodes adopt them at once. Returns how many.
    pub async fn release_node_users(&self, node: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE user_owners SET node_id = NULL, epoch = epoch + 1, updated_at = {now} \
             WHERE node_id = $1",
            now = self.db.now()
        );
        Ok(self.db.query(sql).bind(node).execute().await?)
    }

    // ---- fenced writes of user actors ----

    /// [`Store::set_channel`], only if `fence` still owns the user. False: fenced.
    pub async fn set_channel_fenced(
        &self,
        fence: &Fence,
        network: NetworkId,
        name: &[u8],
        key: &[u8],
        joined: bool,
        chan_key: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let q = self
            .db
            .query(format!(
                "INSERT INTO buffers (network_id, key, name, kind, joined, chan_key) \
                 SELECT $1, $2, $3, $4, $5, $6 WHERE {} \
                 ON CONFLICT (network_id, key) DO UPDATE \
                 SET name = excluded.name, joined = excluded.joined, chan_key = excluded.chan_key",
                owns(7, 8, 9)
            ))
            .bind(network)
            .bind(key)
            .bind(name)
            .bind(BufferKind::of(name).as_str())
            .bind(joined)
            .bind(chan_key);
        fenced(q, fence).await
    }

    /// [`Store::set_network_nick`], only if `fence` still owns the user. False: fenced.
    pub async fn set_network_nick_fenced(
        &self,
        fence: &Fence,
        network: NetworkId,
        nick: &str,
    ) -> Result<bool, StoreError> {
        let q = self
            .db
            .query(format!(
                "UPDATE networks SET nick = $2 WHERE id = $1 AND {}",
                owns(3, 4, 5)
            ))
            .bind(network)
            .bind(nick);
        fenced(q, fence).await
    }

    /// [`Store::set_detached`], only if `fence` still owns the user. False: fenced.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the network has no buffer with this key.
    pub async fn set_detached_fenced(
        &self,
        fence: &Fence,
        network: NetworkId,
        key: &[u8],
        detached: bool,
        reattach_on: Option<ReattachOn>,
    ) -> Result<bool, StoreError> {
        let q = self
            .db
            .query(format!(
                "UPDATE buffers SET detached = $3, reattach_on = COALESCE($4, reattach_on) \
                 WHERE network_id = $1 AND key = $2 AND {}",
                owns(5, 6, 7)
            ))
            .bind(network)
            .bind(key)
            .bind(detached)
            .bind(reattach_on.map(ReattachOn::as_str));
        if fenced(q, fence).await? {
            return Ok(true);
        }
        // Nothing written: fenced, or no such buffer (an error, as unfenced).
        let exists: Option<(i64,)> = self
            .db
            .query("SELECT network_id FROM buffers WHERE network_id = $1 AND key = $2")
            .bind(network)
            .bind(key)
            .fetch_optional()
            .await?;
        match exists {
            Some(_) => Ok(false),
            None => Err(StoreError::NotFound(format!(
                "channel {}",
                String::from_utf8_lossy(key)
            ))),
        }
    }

    /// [`Store::set_client_position`], only if `fence` still owns the user. False:
    /// fenced, or the network is gone.
    pub async fn set_client_position_fenced(
        &self,
        fence: &Fence,
        network: NetworkId,
        client: &str,
        seq: Seq,
    ) -> Result<bool, StoreError> {
        let q = self
            .db
            .query(position_upsert())
            .bind(network)
            .bind(client)
            .bind(seq);
        fenced(q, fence).await
    }

    /// Many clients' positions in one transaction (the node's [`super::Positions`]):
    /// each row as [`Store::set_client_position_fenced`], so a row whose fence no
    /// longer owns its user writes nothing and its flag is false. One connection for
    /// the lot, where separate saves took one each, a thousand at a time.
    pub async fn set_client_positions_fenced(
        &self,
        rows: &[(Fence, NetworkId, String, Seq)],
    ) -> Result<Vec<bool>, StoreError> {
        let sql = position_upsert();
        let mut tx = self.db.begin().await?;
        let mut wrote = Vec::with_capacity(rows.len());
        for (fence, network, client, seq) in rows {
            let q = tx
                .query(sql.as_str())
                .bind(*network)
                .bind(client.as_str())
                .bind(*seq);
            wrote.push(fenced(q, fence).await?);
        }
        tx.commit().await?;
        Ok(wrote)
    }
}
