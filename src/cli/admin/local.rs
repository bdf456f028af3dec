//! Admin operations on the store directly, when no node runs (so no actor can be
//! written behind). Should a node run the user all the same (its heartbeat was late
//! when the CLI looked), a per-user change goes through that node's admin API
//! instead, so it reaches the running actor at once (see `http::admin`).

use super::{AdminOps, InviteRow, NetworkRow, Remote, UserRow};
use crate::admin::{self, NetworkSpec};
use crate::auth::{AuthSettings, LoginGuard};
use crate::config::NodeConfig;
use crate::limits::{LimitsSpec, LimitsView};
use crate::store::{NetworkLimits, Retention, Store};

/// The store, with no node running on it.
pub struct Local {
    store: Store,
    /// The settings a node would run with (`--config`): `[accounts] invites` and the
    /// public HTTP URL for invite links (boxed: `Admin` holds a `Local` or a `Remote`).
    config: Option<Box<NodeConfig>>,
}

impl Local {
    pub fn new(store: Store) -> Local {
        Local {
            store,
            config: None,
        }
    }

    /// With the settings a node on this store would have.
    pub fn with_config(mut self, config: NodeConfig) -> Local {
        self.config = Some(Box::new(config));
        self
    }
}

impl Local {
    /// The live node that runs user `name`, if any: changes to the user go there.
    async fn live_owner(&self, name: &str) -> anyhow::Result<Option<Remote>> {
        let Some(user) = self.store.user_by_name(name).await? else {
            return Ok(None);
        };
        let Some(owner) = self.store.owner(user.id).await?.and_then(|o| o.node_id) else {
            return Ok(None);
        };
        if !self.store.node_is_live(&owner).await? {
            return Ok(None);
        }
        let node = self
            .store
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.id == owner);
        node.map(|n| Remote::new(&n, self.store.secret_key()))
            .transpose()
    }
}

impl AdminOps for Local {
    async fn add_user(&self, name: &str, password: &str, is_admin: bool) -> anyhow::Result<()> {
        let guard = LoginGuard::new(AuthSettings::default(), 1);
        admin::create_user(&self.store, &guard, name, password, is_admin).await?;
        Ok(())
    }

    async fn list_users(&self) -> anyhow::Result<Vec<UserRow>> {
        let mut out = Vec::new();
        for u in self.store.list_users().await? {
            out.push(UserRow {
                node: self.store.owner(u.id).await?.and_then(|o| o.node_id),
                networks: self.store.networks(u.id).await?.len(),
                name: u.name,
                admin: u.is_admin,
                running: false,
            });
        }
        Ok(out)
    }

    async fn set_retention(&self, name: &str, retention: Retention) -> anyhow::Result<()> {
        if let Some(owner) = self.live_owner(name).await? {
            return owner.set_retention(name, retention).await;
        }
        let user = admin::find_user(&self.store, name).await?;
        self.store.set_retention(user.id, retention).await?;
        Ok(())
    }

    async fn remove_user(&self, name: &str) -> anyhow::Result<()> {
        if let Some(owner) = self.live_owner(name).await? {
            return owner.remove_user(name).await;
        }
        let user = admin::find_user(&self.store, name).await?;
        self.store.delete_user(user.id).await?;
        Ok(())
    }

    async fn add_network(&self, user: &str, spec: &NetworkSpec) -> anyhow::Result<()> {
        let new = spec.to_new_network()?;
        if let Some(owner) = self.live_owner(user).await? {
            return owner.add_network(user, spec).await;
        }
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
        if let Some(owner) = self.live_owner(user).await? {
            return owner.remove_network(user, name).await;
        }
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

    async fn create_invite(
        &self,
        admin: bool,
        ttl: std::time::Duration,
    ) -> anyhow::Result<InviteRow> {
        let config = self
            .config
            .clone()
            .unwrap_or_else(|| Box::new(NodeConfig::new(String::new())));
        let new = match crate::invite::create(&self.store, &config.accounts, admin, ttl).await {
            Err(crate::invite::InviteError::Disabled) => anyhow::bail!(
                "invites are disabled: set `[accounts] invites = true` in the config file \
                 (no node is running, so this command reads the file given with --config)"
            ),
            other => other?,
        };
        let base = config
            .advertise_http
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.http));
        Ok(InviteRow {
            url: new.url(&base),
            token: new.token,
            admin: new.admin,
            expires_at: new
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }
}
