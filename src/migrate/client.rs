//! A client of one node's admin API (`/api/admin/…`, bearer token from the node
//! list): what the migration driver calls on the nodes, and what the CLI's admin
//! commands call on a running node.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::NodeRecord;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request did not get through (the node is down, or the answer timed out).
    #[error("node {node} is unreachable")]
    Unreachable {
        node: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error; `message` is its own.
    #[error("node {node}: {message}")]
    Refused { node: String, message: String },
    /// The node's answer could not be read.
    #[error("reading the node's answer")]
    Answer(#[source] anyhow::Error),
}

/// A node's admin API.
#[derive(Clone)]
pub struct AdminClient {
    /// The node's id.
    pub node: String,
    /// Its admin base URL (`http://host:port`).
    pub url: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of `node`'s admin API whose calls give up after `timeout`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS backend, say).
    pub fn new(node: &NodeRecord, timeout: Duration) -> anyhow::Result<AdminClient> {
        Ok(AdminClient {
            node: node.id.clone(),
            url: node.admin_url.clone(),
            token: node.admin_token.clone(),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    /// Calls `method` on `/api/admin{path}` with `body` as JSON. `Ok(None)` when the
    /// node answers 204 No Content.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, CallError> {
        let mut req = self
            .http
            .request(method, format!("{}/api/admin{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |source| CallError::Unreachable {
            node: self.node.clone(),
            url: self.url.clone(),
            source,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = resp.text().await.map_err(unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(CallError::Refused {
                node: self.node.clone(),
                message,
            });
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CallError::Answer(e.into()))
    }

    /// `POST /api/admin{path}` that must answer with a body (the driver's calls).
    ///
    /// # Errors
    /// See [`CallError`]; an empty answer is an error too.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::POST, path, Some(body))
            .await?
            .ok_or_else(|| anyhow::anyhow!("node {}: no answer", self.node))
    }
}
