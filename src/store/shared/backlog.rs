// The backend-independent backlog queries of `sqlite.rs` and `postgres.rs`,
// included by both (`include!`): the SQL is the same text on both databases.

impl Db {
    pub(super) async fn history(&self, q: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let mut qb: QueryBuilder<Dialect> = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m \
             JOIN buffers b ON b.id = m.buffer_id JOIN bodies bo ON bo.id = m.body_id \
             WHERE m.user_id = "
        ));
        qb.push_bind(q.user);
        push_filters(
            &mut qb,
            q.network,
            q.buffer_key.as_deref(),
            q.from,
            q.to,
            q.before,
        );
        if let Some(s) = q.after {
            qb.push(" AND m.seq > ").push_bind(s);
        }
        qb.push(if q.newest_first {
            " ORDER BY m.seq DESC"
        } else {
            " ORDER BY m.seq ASC"
        });
        qb.push(" LIMIT ").push_bind(q.limit);
        let rows: Vec<MessageRow> = qb.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(super) async fn targets(
        &self,
        user: UserId,
        network: NetworkId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Vec<u8>, DateTime<Utc>)>, StoreError> {
        let rows: Vec<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT b.name, MAX(m.time) AS latest FROM messages m JOIN buffers b ON b.id = m.buffer_id \
             WHERE m.user_id = $1 AND m.network_id = $2 AND m.time >= $3 AND m.time <= $4 \
             GROUP BY b.id, b.name ORDER BY latest DESC, b.id DESC LIMIT $5",
        )
        .bind(user)
        .bind(network)
        .bind(to_ms(from))
        .bind(to_ms(to))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(n, t)| (n, from_ms(t))).collect())
    }

    pub(super) async fn client_position(
        &self,
        network: NetworkId,
        client: &str,
    ) -> Result<Option<Seq>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT seq FROM client_positions WHERE network_id = $1 AND client = $2",
        )
        .bind(network)
        .bind(client)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn set_client_position(
        &self,
        network: NetworkId,
        client: &str,
        seq: Seq,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO client_positions (network_id, client, seq) VALUES ($1, $2, $3) \
             ON CONFLICT (network_id, client) DO UPDATE SET seq = excluded.seq \
             WHERE excluded.seq > client_positions.seq",
        )
        .bind(network)
        .bind(client)
        .bind(seq)
        .execute(&self.pool)
        .await
        .map_err(not_found_on_fk(|| format!("network {network}")))?;
        Ok(())
    }

    pub(super) async fn enforce_retention(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let users: Vec<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT id, retention_max_age_days, retention_max_messages FROM users \
             WHERE retention_max_age_days IS NOT NULL OR retention_max_messages IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut deleted = 0;
        for (user, max_age_days, max_messages) in users {
            if let Some(days) = max_age_days {
                let cutoff = to_ms(now - chrono::Duration::days(days.max(0)));
                deleted += sqlx::query("DELETE FROM messages WHERE user_id = $1 AND time < $2")
                    .bind(user)
                    .bind(cutoff)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            if let Some(max) = max_messages {
                deleted += sqlx::query(
                    "DELETE FROM messages WHERE user_id = $1 AND seq <= \
                     (SELECT seq FROM messages WHERE user_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
                )
                .bind(user)
                .bind(max.max(0))
                .execute(&self.pool)
                .await?
                .rows_affected();
            }
        }
        // Bodies nothing refers to any more: left by retention, deleted users and
        // networks, or batches retried after a lost commit acknowledgement.
        let bodies = sqlx::query(
            "DELETE FROM bodies WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = bodies.id)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        tracing::debug!(messages = deleted, bodies, "retention enforced");
        Ok(deleted)
    }

}

/// Appends the filters history and search share, as `AND …`, to a query over
/// `messages m JOIN buffers b` (same SQL on both databases).
fn push_filters<'a>(
    qb: &mut QueryBuilder<'a, Dialect>,
    network: Option<NetworkId>,
    buffer_key: Option<&'a [u8]>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    before: Option<Seq>,
) {
    if let Some(n) = network {
        qb.push(" AND m.network_id = ").push_bind(n);
    }
    if let Some(k) = buffer_key {
        qb.push(" AND b.key = ").push_bind(k);
    }
    if let Some(s) = before {
        qb.push(" AND m.seq < ").push_bind(s);
    }
    if let Some(t) = from {
        qb.push(" AND m.time >= ").push_bind(to_ms(t));
    }
    if let Some(t) = to {
        qb.push(" AND m.time <= ").push_bind(to_ms(t));
    }
}

/// [`push_filters`] of a search, and its sender (as the backend can store it).
fn push_search_filters<'a>(
    qb: &mut QueryBuilder<'a, Dialect>,
    q: &'a SearchQuery,
    sender: Option<&str>,
) {
    push_filters(qb, q.network, q.buffer_key.as_deref(), q.from, q.to, q.before);
    if let Some(s) = sender {
        qb.push(" AND lower(m.sender) = lower(")
            .push_bind(s.to_owned())
            .push(")");
    }
}
