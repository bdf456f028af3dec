//! A client of one node's admin API (`/api/admin/…`, bearer token derived from the
//! node list with the secret key): what the migration driver calls on the nodes, and what the CLI's admin
//! commands call on a running node.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::secrets::{SecretError, SecretKey};
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
    Refused {
        node: String,
        /// The HTTP status it answered with.
        status: u16,
        message: String,
    },
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
    /// Calls carry [`FORWARDED`]: the node acts itself, never passes them on.
    forwarded: bool,
}

/// The header of an admin call one node passes to the node that runs the user (see
/// `http::admin`): the receiver acts on it itself, so a call is forwarded at most once.
pub const FORWARDED: &str = "x-ferry-forwarded";

impl AdminClient {
    /// A client of `node`'s admin API whose calls give up after `timeout`.
    /// The node's token is derived from what the node list keeps of it with the
    /// secret key (`secrets.rs`), so only a holder of the key reaches the admin API.
    ///
    /// # Errors
    /// No key, a key other than the node's, or the HTTP client cannot be built.
    pub fn new(
        node: &NodeRecord,
        key: Option<&SecretKey>,
        timeout: Duration,
    ) -> anyhow::Result<AdminClient> {
        let what = || format!("the admin token of node {:?}", node.id);
        let key = key.ok_or_else(|| SecretError::NoKey { what: what() })?;
        let token = key.recover_admin_token(&node.id, &node.admin_token)?;
        Ok(AdminClient {
            node: node.id.clone(),
            url: node.admin_url.clone(),
            token,
            // Idle pooled connections are dropped well before a node's HTTP header
            // timeout (`[http] header_timeout_secs`, at least 1 s, 10 by default)
            // closes them, so a request never races the node's close.
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_idle_timeout(Duration::from_millis(900))
                .build()?,
            forwarded: false,
        })
    }

    /// The same client, for calls passed on from another node (marked [`FORWARDED`]).
    #[must_use]
    pub fn forwarded(mut self) -> AdminClient {
        self.forwarded = true;
        self
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
        if self.forwarded {
            req = req.header(FORWARDED, "1");
        }
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
                status: status.as_u16(),
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
