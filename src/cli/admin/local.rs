//! Admin operations on the store directly, when no node runs (so no actor can be
//! written behind).

use super::{AdminOps, NetworkRow, UserRow};
use crate::admin::{self, NetworkSpec};
use crate::limits::{LimitsSpec, LimitsView};
use crate::store::{NetworkLimits, Retention, Store};

/// The store, with no node running on it.
pub struct Local {
    store: Store,
}

impl Local {
    pub fn new(store: Store) -> Local {
        Local { store }
    }
}

impl AdminOps for Local {
    async fn add_user(&self, name: &str, password: &str, is_admin: bool) -> anyhow::Result<()> {
        admin::create_user(&self.store, name, password, is_admin).await?;
        Ok(())
    }

    async fn list_users(&self) -> anyhow::Result<Vec<UserRow>> {
        let mut out = Vec::new();
        for u in self.store.list_users().await? {
            out.push(UserRow {
                networks: self.store.networks(u.id).await?.len(),
                name: u.name,
                admin: u.is_admin,
                running: false,
            });
        }
        Ok(out)
    }

    async fn set_retention(&self, name: &str, retention: Retention) -> anyhow::Result<()> {
        let user = admin::find_user(&self.store, name).await?;
        self.store.set_retention(user.id, retention).await?;
        Ok(())
    }

    async fn remove_user(&self, name: &str) -> anyhow::Result<()> {
        let user = admin::find_user(&self.store, name).await?;
        self.store.delete_user(user.id).await?;
        Ok(())
    }

    async fn add_network(&self, user: &str, spec: &NetworkSpec) -> anyhow::Result<()> {
        let new = spec.to_new_network()?;
        let user = admin::find_user(&self.store, user).await?;
        self.store.create_network(user.id, &new).await?;
        Ok(())
    }

    async fn list_networks(&self, user: &str) -> anyhow::Result<Vec<NetworkRow>> {
        let u = admin::find_user(&self.store, user).await?;
        Ok(self
            .store
            .networks(u.id)
            .await?
            .into_iter()
            .map(|n| NetworkRow {
                name: n.name,
                addr: n.addr,
                tls: n.tls,
                nick: n.nick,
                live: None,
            })
            .collect())
    }

    async fn remove_network(&self, user: &str, name: &str) -> anyhow::Result<()> {
        let u = admin::find_user(&self.store, user).await?;
        let n = self
            .store
            .network_by_name(u.id, name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("user {user:?} has no network {name:?}"))?;
        self.store.delete_network(n.id).await?;
        Ok(())
    }

    async fn set_limits(
        &self,
        _spec: &LimitsSpec,
        limits: &NetworkLimits,
    ) -> anyhow::Result<LimitsView> {
        self.store.set_network_limits(limits).await?;
        Ok(LimitsView::from(limits))
    }

    async fn list_limits(&self) -> anyhow::Result<Vec<LimitsView>> {
        Ok(self
            .store
            .network_limits()
            .await?
            .iter()
            .map(LimitsView::from)
            .collect())
    }

    async fn remove_limits(&self, key: &str) -> anyhow::Result<()> {
        if !self.store.delete_network_limits(key).await? {
            anyhow::bail!("no limits for {key:?}");
        }
        Ok(())
    }
}
