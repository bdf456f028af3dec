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

use super::types::{
    Fence, NetworkId, NodeHealth, NodeRecord, OwnedFingerprint, Ownership, Seq, UserId,
};
use super::{Backend, Store, StoreError};

macro_rules! dispatch {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match &*$self.backend {
            Backend::Sqlite(db) => db.$f($($arg),*).await,
            Backend::Postgres(db) => db.$f($($arg),*).await,
        }
    };
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    // ---- nodes ----

    /// Creates or replaces the node record (state, addresses, capacity); sets its
    /// heartbeat to now and its lease to now + `lease`.
    pub async fn register_node(&self, n: &NodeRecord, lease: Duration) -> Result<(), StoreError> {
        dispatch!(self.register_node(n, ms(lease)))
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
        dispatch!(self.heartbeat_node(id, health, ms(lease)))
    }

    /// Sets a node's state (`active`, `draining`, `drained`, `dead`).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the node is not registered.
    pub async fn set_node_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        dispatch!(self.set_node_state(id, state))
    }

    /// All registered nodes, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        dispatch!(self.nodes())
    }

    pub async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        dispatch!(self.remove_node(id))
    }

    /// Marks `dead` every node whose lease ran out more than `margin` ago (by the
    /// database's clock); returns their ids.
    pub async fn mark_lapsed_nodes_dead(
        &self,
        margin: Duration,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self.mark_lapsed_nodes_dead(ms(margin)))
    }

    /// Ids of the nodes whose lease is live now (by the database's clock) and that are
    /// `active`: the nodes that may take users.
    pub async fn live_active_nodes(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self.live_active_nodes())
    }

    // ---- ownership ----

    /// The owner row of a user; `None` if there is no such user.
    pub async fn owner(&self, user: UserId) -> Result<Option<Ownership>, StoreError> {
        dispatch!(self.owner(user))
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
        dispatch!(self.assign_user(user, node, expected_epoch))
    }

    /// The users a node owns, with the epoch it must write with.
    pub async fn owned_users(&self, node: &str) -> Result<Vec<Ownership>, StoreError> {
        dispatch!(self.owned_users(node))
    }

    /// A cheap summary of the users a node owns, to tell whether they changed since
    /// the last full [`Store::owned_users`] without reading them all.
    pub async fn owned_fingerprint(&self, node: &str) -> Result<OwnedFingerprint, StoreError> {
        dispatch!(self.owned_fingerprint(node))
    }

    /// Whether a failover round has obvious work: a user owned by nobody, or by a node
    /// that is dead, drained or past its lease by `margin`. Cheap (index lookups); it
    /// does not see users without an owner row or owned by an unregistered node, which
    /// only the full [`Store::adoptable_users`] finds.
    pub async fn adoption_pending(&self, margin: Duration) -> Result<bool, StoreError> {
        dispatch!(self.adoption_pending(ms(margin)))
    }

    /// Every owner row, by user id.
    pub async fn ownerships(&self) -> Result<Vec<Ownership>, StoreError> {
        dispatch!(self.ownerships())
    }

    /// Users that need a new owner: nobody owns them, their owner is not registered or
    /// is `dead`/`drained`, or its lease ran out more than `margin` ago.
    pub async fn adoptable_users(&self, margin: Duration) -> Result<Vec<Ownership>, StoreError> {
        dispatch!(self.adoptable_users(ms(margin)))
    }

    /// Gives up every user `node` owns (clean shutdown): owner NULL, epoch + 1, so other
    /// nodes adopt them at once. Returns how many.
    pub async fn release_node_users(&self, node: &str) -> Result<u64, StoreError> {
        dispatch!(self.release_node_users(node))
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
        dispatch!(self.set_channel_fenced(fence, network, name, key, joined, chan_key))
    }

    /// [`Store::set_network_nick`], only if `fence` still owns the user. False: fenced.
    pub async fn set_network_nick_fenced(
        &self,
        fence: &Fence,
        network: NetworkId,
        nick: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self.set_network_nick_fenced(fence, network, nick))
    }

    /// [`Store::set_client_position`], only if `fence` still owns the user. False: fenced.
    pub async fn set_client_position_fenced(
        &self,
        fence: &Fence,
        network: NetworkId,
        client: &str,
        seq: Seq,
    ) -> Result<bool, StoreError> {
        dispatch!(self.set_client_position_fenced(fence, network, client, seq))
    }
}
