//! What starting a user's actor reads, for every user a node owns in one query per
//! table instead of several queries per user: an upgrade's new process resumes
//! thousands of parked users at once (`server::upgrade::resume_parked`).

use std::collections::HashMap;

use super::types::{AwaySettings, Buffer, BufferRow, Network, NetworkId, NetworkRow, UserId};
use super::{Store, StoreError};

/// One user's rows, as the per-user reads return them.
#[derive(Clone, Debug)]
pub struct StartRows {
    /// The ownership epoch of the node asked about (as [`Store::owner`]).
    pub epoch: i64,
    /// As [`Store::away_settings`].
    pub away: AwaySettings,
    /// As [`Store::networks`] (by name).
    pub networks: Vec<Network>,
    /// Each of those networks' buffers, as [`Store::buffers`] (by key); a network
    /// without buffers has no entry.
    pub buffers: HashMap<NetworkId, Vec<Buffer>>,
}

impl Store {
    /// The rows starting each user `node` owns reads, by user: three queries in all.
    /// Not one snapshot (the queries run one after another): for a start that
    /// nothing else changes meanwhile, like an upgrade's before it serves.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn start_rows(&self, node: &str) -> Result<HashMap<UserId, StartRows>, StoreError> {
        self.rows_where(node, "").await
    }

    /// [`Store::start_rows`] for some of the users `node` owns (an upgrade's batch).
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn start_rows_of(
        &self,
        node: &str,
        users: &[UserId],
    ) -> Result<HashMap<UserId, StartRows>, StoreError> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        // Numbers only: written into the statement as they are.
        let list: Vec<String> = users.iter().map(ToString::to_string).collect();
        self.rows_where(node, &format!(" AND o.user_id IN ({})", list.join(",")))
            .await
    }

    /// The three queries, `and` narrowing the owners (`o`) further.
    async fn rows_where(
        &self,
        node: &str,
        and: &str,
    ) -> Result<HashMap<UserId, StartRows>, StoreError> {
        let owners: Vec<(i64, i64, bool, Option<String>)> = self
            .db
            .query(format!(
                "SELECT u.id, o.epoch, u.auto_away, u.away_message FROM users u \
                 JOIN user_owners o ON o.user_id = u.id WHERE o.node_id = $1{and}"
            ))
            .bind(node)
            .fetch_all()
            .await?;
        let networks: Vec<NetworkRow> = self
            .db
            .query(format!(
                "SELECT n.* FROM networks n JOIN user_owners o ON o.user_id = n.user_id \
                 WHERE o.node_id = $1{and} ORDER BY n.user_id, n.name"
            ))
            .bind(node)
            .fetch_all()
            .await?;
        let buffers: Vec<BufferRow> = self
            .db
            .query(format!(
                "SELECT b.* FROM buffers b JOIN networks n ON n.id = b.network_id \
                 JOIN user_owners o ON o.user_id = n.user_id \
                 WHERE o.node_id = $1{and} ORDER BY b.network_id, b.key"
            ))
            .bind(node)
            .fetch_all()
            .await?;
        let mut out: HashMap<UserId, StartRows> = owners
            .into_iter()
            .map(|(id, epoch, auto_away, away_message)| {
                let rows = StartRows {
                    epoch,
                    away: AwaySettings {
                        auto_away,
                        away_message,
                    },
                    networks: Vec::new(),
                    buffers: HashMap::new(),
                };
                (id, rows)
            })
            .collect();
        let mut user_of: HashMap<NetworkId, UserId> = HashMap::new();
        for row in networks {
            let n = row.into_network(self.secret_key())?;
            if let Some(rows) = out.get_mut(&n.user_id) {
                user_of.insert(n.id, n.user_id);
                rows.networks.push(n);
            }
        }
        for row in buffers {
            let b: Buffer = row.into();
            if let Some(rows) = user_of.get(&b.network_id).and_then(|u| out.get_mut(u)) {
                rows.buffers.entry(b.network_id).or_default().push(b);
            }
        }
        Ok(out)
    }
}
