//! Admin operations through a running node's admin API (`/api/admin/…`).

use anyhow::Context;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::{AdminOps, InviteRow, NetworkRow, UserRow, CALL_TIMEOUT};
use crate::admin::NetworkSpec;
use crate::limits::{LimitsSpec, LimitsView};
use crate::migrate::{AdminClient, CallError};
use crate::secrets::SecretKey;
use crate::store::{NetworkLimits, NodeRecord, Retention};

/// A running node, reached through its admin API.
pub struct Remote {
    client: AdminClient,
}

impl Remote {
    /// The admin API of `node` (from the node list).
    ///
    /// # Errors
    /// When the HTTP client cannot be built, or the node's admin token cannot be
    /// derived with `key` (none, or not the node's).
    pub fn new(node: &NodeRecord, key: Option<&SecretKey>) -> anyhow::Result<Remote> {
        Ok(Remote {
            client: AdminClient::new(node, key, CALL_TIMEOUT).with_context(|| {
                format!(
                    "reaching the running node {:?} through its admin API",
                    node.id
                )
            })?,
        })
    }

    /// Calls the admin API; the node's own error message is the error. `Ok(None)`
    /// when it answers 204 No Content.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<Option<T>> {
        self.client
            .call(method, path, body)
            .await
            .map_err(|e| match e {
                CallError::Unreachable { url, source, .. } => anyhow::Error::new(source).context(
                    format!("reaching the running node at {url} (is it still up?)"),
                ),
                CallError::Refused { message, .. } => anyhow::Error::msg(message),
                other => other.into(),
            })
    }

    /// A call whose answer does not matter.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<()> {
        let _: Option<serde_json::Value> = self.call(method, path, body).await?;
        Ok(())
    }
}

impl AdminOps for Remote {
    async fn add_user(&self, name: &str, password: &str, admin: bool) -> anyhow::Result<()> {
        let body = json!({ "name": name, "password": password, "admin": admin });
        let _: Option<UserRow> = self.call(Method::POST, "/users", Some(&body)).await?;
        Ok(())
    }

    async fn list_users(&self) -> anyhow::Result<Vec<UserRow>> {
        Ok(self
            .call(Method::GET, "/users", None::<&()>)
            .await?
            .unwrap_or_default())
    }

    async fn set_retention(&self, name: &str, retention: Retention) -> anyhow::Result<()> {
        let body = json!({
            "retention_days": retention.max_age_days,
            "retention_messages": retention.max_messages,
        });
        self.send(Method::PATCH, &format!("/users/{name}"), Some(&body))
            .await
    }

    async fn remove_user(&self, name: &str) -> anyhow::Result<()> {
        self.send(Method::DELETE, &format!("/users/{name}"), None::<&()>)
            .await
    }

    async fn add_network(&self, user: &str, spec: &NetworkSpec) -> anyhow::Result<()> {
        self.send(Method::POST, &format!("/users/{user}/networks"), Some(spec))
            .await
    }

    async fn list_networks(&self, user: &str) -> anyhow::Result<Vec<NetworkRow>> {
        Ok(self
            .call(Method::GET, &format!("/users/{user}/networks"), None::<&()>)
            .await?
            .unwrap_or_default())
    }

    async fn remove_network(&self, user: &str, name: &str) -> anyhow::Result<()> {
        self.send(
            Method::DELETE,
            &format!("/users/{user}/networks/{name}"),
            None::<&()>,
        )
        .await
    }

    async fn set_limits(
        &self,
        spec: &LimitsSpec,
        limits: &NetworkLimits,
    ) -> anyhow::Result<LimitsView> {
        // The CLI checked the key already (or was told --force).
        self.call(
            Method::PUT,
            &format!("/limits/{}?force=true", limits.key),
            Some(spec),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the node sent no limits back"))
    }

    async fn list_limits(&self) -> anyhow::Result<Vec<LimitsView>> {
        Ok(self
            .call(Method::GET, "/limits", None::<&()>)
            .await?
            .unwrap_or_default())
    }

    async fn remove_limits(&self, key: &str) -> anyhow::Result<()> {
        self.send(Method::DELETE, &format!("/limits/{key}"), None::<&()>)
            .await
    }

    async fn create_invite(
        &self,
        admin: bool,
        ttl: std::time::Duration,
    ) -> anyhow::Result<InviteRow> {
        let body = json!({ "admin": admin, "expires_secs": ttl.as_secs() });
        self.call(Method::POST, "/invites", Some(&body))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the node sent no invite back"))
    }
}
