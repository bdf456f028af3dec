//! What admin commands do, and the two ways of doing it: [`Remote`] through a running
//! node's admin API (found in the store's node list), so a change reaches the live
//! actors at once, or [`Local`] on the store directly when no node runs. Commands are
//! written once against [`AdminOps`]; [`connect`] picks the implementation.

mod local;
mod remote;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::{Deserialize, Serialize};

pub use local::Local;
pub use remote::Remote;

use super::Cli;
use crate::admin::NetworkSpec;
use crate::limits::{LimitsSpec, LimitsView};
use crate::store::{NetworkLimits, Retention, Store};

/// A node whose heartbeat is older than this is not running.
const LIVE: Duration = Duration::from_secs(30);
/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A user as `ferry user list` shows it.
#[derive(Deserialize, Serialize)]
pub struct UserRow {
    pub name: String,
    pub admin: bool,
    pub networks: usize,
    /// Whether a node runs the user now (always `false` without a node).
    pub running: bool,
}

/// A network as `ferry network list` shows it.
#[derive(Serialize, Deserialize)]
pub struct NetworkRow {
    pub name: String,
    pub addr: String,
    pub tls: bool,
    pub nick: String,
    /// Its live state (`state`, `nick`, `channels`) when a node runs its user.
    #[serde(default)]
    pub live: Option<serde_json::Value>,
}

/// The admin operations of the CLI. Input is validated by the caller (the checks in
/// `crate::admin`), so both implementations see the same, valid requests.
pub trait AdminOps {
    async fn add_user(&self, name: &str, password: &str, admin: bool) -> anyhow::Result<()>;
    async fn list_users(&self) -> anyhow::Result<Vec<UserRow>>;
    async fn set_retention(&self, name: &str, retention: Retention) -> anyhow::Result<()>;
    async fn remove_user(&self, name: &str) -> anyhow::Result<()>;
    async fn add_network(&self, user: &str, spec: &NetworkSpec) -> anyhow::Result<()>;
    async fn list_networks(&self, user: &str) -> anyhow::Result<Vec<NetworkRow>>;
    async fn remove_network(&self, user: &str, name: &str) -> anyhow::Result<()>;
    /// Sets `limits`, which is `spec` checked for its key.
    async fn set_limits(
        &self,
        spec: &LimitsSpec,
        limits: &NetworkLimits,
    ) -> anyhow::Result<LimitsView>;
    async fn list_limits(&self) -> anyhow::Result<Vec<LimitsView>>;
    async fn remove_limits(&self, key: &str) -> anyhow::Result<()>;
}

/// Where admin commands act.
pub enum Admin {
    /// A running node's admin API.
    Remote(Remote),
    /// No node runs on this store: act on it directly.
    Local(Local),
}

/// Opens the store and looks for a running node in its node list (the one with the
/// newest heartbeat, if any is recent).
///
/// # Errors
/// The store cannot be opened or read.
pub async fn connect(cli: &Cli) -> anyhow::Result<Admin> {
    let store = open_store(cli).await?;
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
    Ok(match live {
        Some(n) => Admin::Remote(Remote::new(&n)?),
        None => Admin::Local(Local::new(store)),
    })
}

/// Opens the store the global options name. Creating an empty SQLite store is fine:
/// a first `user add` before the first `serve`.
///
/// # Errors
/// The data directory cannot be created or the store cannot be opened.
pub async fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    let url = cli.database_url();
    if url.starts_with("sqlite://") && cli.database.is_none() && !db_exists(&cli.data_dir) {
        std::fs::create_dir_all(&cli.data_dir)
            .with_context(|| format!("creating the data directory {}", cli.data_dir.display()))?;
    }
    Store::open(&url)
        .await
        .with_context(|| format!("opening the database ({})", crate::config::redact_url(&url)))
}

fn db_exists(data_dir: &Path) -> bool {
    data_dir.join("ferry.db").exists()
}
