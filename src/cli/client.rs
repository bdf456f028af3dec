//! How admin commands reach a running node: through its admin API, found in
//! the store's node list; or, with no node running, the store itself.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::Store;

use super::Cli;

/// A node whose heartbeat is older than this is not running.
const LIVE: Duration = Duration::from_secs(30);

pub enum Target {
    /// A running node's admin API.
    Node {
        url: String,
        token: String,
        http: reqwest::Client,
    },
    /// No node runs on this store: act on it directly.
    Store,
}

pub struct Admin {
    pub store: Store,
    pub target: Target,
}

impl Admin {
    pub async fn connect(cli: &Cli) -> anyhow::Result<Admin> {
        let url = cli.database_url();
        if url.starts_with("sqlite://")
            && cli.database.is_none()
            && !cli.data_dir.join("ferry.db").exists()
        {
            // Creating an empty store is fine: a first `user add` before the first `serve`.
            std::fs::create_dir_all(&cli.data_dir).with_context(|| {
                format!("creating the data directory {}", cli.data_dir.display())
            })?;
        }
        let store = Store::open(&url).await.with_context(|| {
            format!("opening the database ({})", crate::config::redact_url(&url))
        })?;
        let now = Utc::now();
        let live = store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| {
                (now - n.heartbeat_at)
                    .to_std()
                    .map_or(true, |age| age < LIVE)
            })
            .max_by_key(|n| n.heartbeat_at);
        let target = match live {
            Some(n) => Target::Node {
                url: n.admin_url,
                token: n.admin_token,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()?,
            },
            None => Target::Store,
        };
        Ok(Admin { store, target })
    }

    /// Calls the node's admin API. `method` is GET, POST, PUT or DELETE.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<Option<T>> {
        let Target::Node { url, token, http } = &self.target else {
            anyhow::bail!("no running node");
        };
        let mut req = http
            .request(method, format!("{url}/api/admin{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching the running node at {url} (is it still up?)"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = resp.text().await?;
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("{msg}");
        }
        Ok(Some(
            serde_json::from_str(&text).context("reading the node's answer")?,
        ))
    }
}
