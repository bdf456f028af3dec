//! Users, their networks, and the networks' buffers (channels and queries).

use super::sql::Sql;
use super::types::{
    now_ms, sasl_columns, sasl_place, Buffer, BufferKind, BufferNewestRow, BufferRow, Network,
    NetworkId, NetworkRow, NewNetwork, Retention, Seq, User, UserId, UserRow,
};
use super::{expect_one, not_found_on_fk, Store, StoreError};
use crate::secrets::SecretError;

impl Store {
    // ---- users ----

    /// # Errors
    /// [`StoreError::Conflict`] if a user with this name exists.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User, StoreError> {
        let row: UserRow = self
            .db
            .query(
                "INSERT INTO users (name, password_hash, is_admin, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING *",
            )
            .bind(name)
            .bind(password_hash)
            .bind(is_admin)
            .bind(now_ms())
            .fetch_one()
            .await
            .map_err(StoreError::conflict_on(|| format!("user {name:?}")))?;
        Ok(row.into())
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = self
            .db
            .query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await?;
        Ok(row.map(Into::into))
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = self
            .db
            .query("SELECT * FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional()
            .await?;
        Ok(row.map(Into::into))
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows: Vec<UserRow> = self
            .db
            .query("SELECT * FROM users ORDER BY name")
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Deletes the user with its networks, buffers, messages and positions.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn delete_user(&self, id: UserId) -> Result<(), StoreError> {
        self.before_deleting_buffers(
            "SELECT b.id FROM buffers b JOIN networks n ON n.id = b.network_id WHERE n.user_id = $1",
            id,
        )
        .await?;
        let n = self
            .db
            .query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute()
            .await?;
        self.db.forget_shared();
        self.collect_events().await?;
        expect_one(n, || format!("user {id}"))
    }

    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn set_password(&self, id: UserId, password_hash: &str) -> Result<(), StoreError> {
        let n = self
            .db
            .query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(id)
            .bind(password_hash)
            .execute()
            .await?;
        expect_one(n, || format!("user {id}"))
    }

    /// # Errors
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn set_retention(&self, id: UserId, r: Retention) -> Result<(), StoreError> {
        let n = self
            .db
            .query(
                "UPDATE users SET retention_max_age_days = $2, retention_max_messages = $3 \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(r.max_age_days)
            .bind(r.max_messages)
            .execute()
            .await?;
        expect_one(n, || format!("user {id}"))
    }

    // ---- networks ----

    /// Creates a network and its configured channels (marked joined).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the user has a network with this name,
    /// [`StoreError::NotFound`] if there is no such user.
    pub async fn create_network(
        &self,
        user: UserId,
        n: &NewNetwork,
    ) -> Result<Network, StoreError> {
        let (mech, sasl_user, sasl_pass, sasl_cert) = sasl_columns(&n.sasl);
        // The password is sealed for the row's id, known once it is inserted: the row
        // is written without it, then given its sealed value in the same transaction.
        let key = match &sasl_pass {
            Some(_) => Some(self.key.as_deref().ok_or_else(|| {
                StoreError::Secret(SecretError::NoKey {
                    what: format!("the SASL password of network {:?}", n.name),
                })
            })?),
            None => None,
        };
        let mut tx = self.db.begin().await?;
        let mut row: NetworkRow = tx
            .query(
                "INSERT INTO networks (user_id, name, addr, tls, tls_verify, nick, username, \
                 realname, sasl_mechanism, sasl_username, sasl_password, sasl_cert, source_ip, \
                 created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING *",
            )
            .bind(user)
            .bind(&n.name)
            .bind(&n.addr)
            .bind(n.tls)
            .bind(n.tls_verify.to_db())
            .bind(&n.nick)
            .bind(&n.username)
            .bind(&n.realname)
            .bind(mech)
            .bind(sasl_user)
            .bind(None::<String>)
            .bind(sasl_cert)
            .bind(&n.source_ip)
            .bind(now_ms())
            .fetch_one()
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                    StoreError::NotFound(format!("user {user}"))
                }
                _ => StoreError::conflict_on(|| format!("network {:?}", n.name))(e),
            })?;
        if let (Some(key), Some(password)) = (key, &sasl_pass) {
            let sealed = key.seal(password, &sasl_place(row.id));
            tx.query("UPDATE networks SET sasl_sealed = $2 WHERE id = $1")
                .bind(row.id)
                .bind(&sealed)
                .execute()
                .await?;
            row.sasl_sealed = Some(sealed);
        }
        for (name, key, chan_key) in &n.channels {
            tx.query(upsert_channel(row.id, name, key, true, chan_key.as_deref()))
                .execute()
                .await
                .map_err(not_found_on_fk(|| format!("network {}", row.id)))?;
        }
        tx.commit().await?;
        row.into_network(self.secret_key())
    }

    pub async fn networks(&self, user: UserId) -> Result<Vec<Network>, StoreError> {
        let rows: Vec<NetworkRow> = self
            .db
            .query("SELECT * FROM networks WHERE user_id = $1 ORDER BY name")
            .bind(user)
            .fetch_all()
            .await?;
        rows.into_iter()
            .map(|r| r.into_network(self.secret_key()))
            .collect()
    }

    pub async fn network(&self, id: NetworkId) -> Result<Option<Network>, StoreError> {
        let row: Option<NetworkRow> = self
            .db
            .query("SELECT * FROM networks WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await?;
        row.map(|r| r.into_network(self.secret_key())).transpose()
    }

    pub async fn network_by_name(
        &self,
        user: UserId,
        name: &str,
    ) -> Result<Option<Network>, StoreError> {
        let row: Option<NetworkRow> = self
            .db
            .query("SELECT * FROM networks WHERE user_id = $1 AND name = $2")
            .bind(user)
            .bind(name)
            .fetch_optional()
            .await?;
        row.map(|r| r.into_network(self.secret_key())).transpose()
    }

    /// Replaces a network's settings (everything but its name and channels) and
    /// whether it connects. A SASL PLAIN password is sealed as at creation.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such network.
    pub async fn update_network(
        &self,
        id: NetworkId,
        n: &NewNetwork,
        enabled: bool,
    ) -> Result<Network, StoreError> {
        let (mech, sasl_user, sasl_pass, sasl_cert) = sasl_columns(&n.sasl);
        let sealed = match &sasl_pass {
            Some(password) => {
                let key = self.key.as_deref().ok_or_else(|| {
                    StoreError::Secret(SecretError::NoKey {
                        what: format!("the SASL password of network {:?}", n.name),
                    })
                })?;
                Some(key.seal(password, &sasl_place(id)))
            }
            None => None,
        };
        let row: Option<NetworkRow> = self
            .db
            .query(
                "UPDATE networks SET addr = $2, tls = $3, tls_verify = $4, nick = $5, \
                 username = $6, realname = $7, sasl_mechanism = $8, sasl_username = $9, \
                 sasl_password = NULL, sasl_sealed = $10, sasl_cert = $11, source_ip = $12, \
                 enabled = $13 WHERE id = $1 RETURNING *",
            )
            .bind(id)
            .bind(&n.addr)
            .bind(n.tls)
            .bind(n.tls_verify.to_db())
            .bind(&n.nick)
            .bind(&n.username)
            .bind(&n.realname)
            .bind(mech)
            .bind(sasl_user)
            .bind(sealed)
            .bind(sasl_cert)
            .bind(&n.source_ip)
            .bind(enabled)
            .fetch_optional()
            .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("network {id}")))?
            .into_network(self.secret_key())
    }

    /// # Errors
    /// [`StoreError::NotFound`] if there is no such network.
    pub async fn delete_network(&self, id: NetworkId) -> Result<(), StoreError> {
        self.before_deleting_buffers("SELECT id FROM buffers WHERE network_id = $1", id)
            .await?;
        let n = self
            .db
            .query("DELETE FROM networks WHERE id = $1")
            .bind(id)
            .execute()
            .await?;
        self.db.forget_shared();
        self.collect_events().await?;
        expect_one(n, || format!("network {id}"))
    }

    /// Remembers the last nick we had on the network.
    pub async fn set_network_nick(&self, id: NetworkId, nick: &str) -> Result<(), StoreError> {
        let n = self
            .db
            .query("UPDATE networks SET nick = $2 WHERE id = $1")
            .bind(id)
            .bind(nick)
            .execute()
            .await?;
        expect_one(n, || format!("network {id}"))
    }

    // ---- buffers ----

    /// The network's channels and queries, ordered by key.
    pub async fn buffers(&self, network: NetworkId) -> Result<Vec<Buffer>, StoreError> {
        let rows: Vec<BufferRow> = self
            .db
            .query("SELECT * FROM buffers WHERE network_id = $1 ORDER BY key")
            .bind(network)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// [`Store::buffers`] with each buffer's `last_message_at` exact: the time of its
    /// newest line (its newest per-user row and the newest visible event of each of
    /// its audiences, the latest of them), read from the newest end of the indexes;
    /// the stored value when that is later (the lines were deleted) or the buffer has
    /// none. For lists shown to people (the HTTP
    /// API); the stored value trails by up to `LAST_MESSAGE_AT_STEP_MS`.
    pub async fn buffers_exact(&self, network: NetworkId) -> Result<Vec<Buffer>, StoreError> {
        let rows: Vec<BufferNewestRow> = self
            .db
            .query(buffers_exact_sql())
            .bind(network)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Creates or updates the buffer `(network, key)`; `key` is the casefolded `name`.
    pub async fn set_channel(
        &self,
        network: NetworkId,
        name: &[u8],
        key: &[u8],
        joined: bool,
        chan_key: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.db
            .query(upsert_channel(network, name, key, joined, chan_key))
            .execute()
            .await
            .map_err(not_found_on_fk(|| format!("network {network}")))?;
        Ok(())
    }

    /// Moves the read marker of an existing buffer forward (never back).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if there is no such buffer.
    pub async fn set_read_marker(
        &self,
        network: NetworkId,
        key: &[u8],
        seq: Seq,
    ) -> Result<(), StoreError> {
        self.db
            .query(
                "INSERT INTO buffers (network_id, key, name, kind, read_marker) \
                 VALUES ($1, $2, $2, $3, $4) \
                 ON CONFLICT (network_id, key) DO UPDATE SET read_marker = excluded.read_marker \
                 WHERE excluded.read_marker > buffers.read_marker",
            )
            .bind(network)
            .bind(key)
            .bind(BufferKind::of(key).as_str())
            .bind(seq)
            .execute()
            .await
            .map_err(not_found_on_fk(|| format!("network {network}")))?;
        Ok(())
    }
}

/// Creates or updates a channel's buffer (name, joined, key).
fn upsert_channel<'a>(
    network: NetworkId,
    name: &'a [u8],
    key: &'a [u8],
    joined: bool,
    chan_key: Option<&'a [u8]>,
) -> Sql<'a> {
    Sql::new(
        "INSERT INTO buffers (network_id, key, name, kind, joined, chan_key) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (network_id, key) DO UPDATE \
         SET name = excluded.name, joined = excluded.joined, chan_key = excluded.chan_key",
    )
    .bind(network)
    .bind(key)
    .bind(name)
    .bind(BufferKind::of(name).as_str())
    .bind(joined)
    .bind(chan_key)
}

/// [`Store::buffers_exact`]'s query (`$1` = the network): each buffer's newest per-user
/// row (the newest end of `messages_buffer_seq`) and the newest visible event of each
/// of its audiences (the newest end of `events_audience`: reading `shared_lines`
/// would sort all the buffer's events). The plans are checked in `tests/shared.rs`.
pub(super) fn buffers_exact_sql() -> String {
    "SELECT b.*, \
       (SELECT m.time FROM messages m WHERE m.buffer_id = b.id \
         ORDER BY m.seq DESC LIMIT 1) AS newest_row, \
       (SELECT MAX((SELECT e.time FROM events e \
                    WHERE e.audience_id = am.audience_id AND e.id >= b.shared_from \
                    ORDER BY e.id DESC LIMIT 1)) \
         FROM audience_members am WHERE am.buffer_id = b.id) AS newest_event \
     FROM buffers b WHERE b.network_id = $1 ORDER BY b.key"
        .to_owned()
}
