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
use crate::secrets::SecretError;
use crate::store::{NetworkLimits, NodeRecord, Retention, Store};

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
    /// Whether its owner node runs the user now, as that node says (always `false`
    /// without a node).
    pub running: bool,
    /// The node that owns the user (the store's owner row), if any.
    #[serde(default)]
    pub node: Option<String>,
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
    /// Makes a one-time sign-up link lasting `ttl` (refused when invites are off).
    async fn create_invite(&self, admin: bool, ttl: Duration) -> anyhow::Result<InviteRow>;
}

/// A new invite as `ferry user invite` prints it.
#[derive(Serialize, Deserialize)]
pub struct InviteRow {
    /// `<public HTTP URL>/#invite=<token>`.
    pub url: String,
    pub token: String,
    pub admin: bool,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// Where admin commands act.
pub enum Admin {
    /// A running node's admin API.
    Remote(Remote),
    /// No node runs on this store: act on it directly.
    Local(Local),
}

/// Whether a command only reads: a read never creates a store (a mistyped
/// `--data-dir` is an error, not a new empty store) nor a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Opens the store and looks for a running node in its node list (the one with the
/// newest heartbeat, if any is recent).
///
/// # Errors
/// The store cannot be opened or read; for a read, there is no store.
pub async fn connect(cli: &Cli, access: Access) -> anyhow::Result<Admin> {
    let mut store = open_store(cli, access).await?;
    Ok(match live_node(&store).await? {
        Some(n) => Admin::Remote(Remote::new(&n, store.secret_key())?),
        None => {
            if access == Access::Write && store.secret_key().is_none() {
                // Acting on the store itself, which may seal a secret (`network add
                // --sasl`): the key is created here as the first `serve` would.
                let source = cli.key_source();
                let (key, _) = source
                    .load(true)
                    .with_context(|| format!("creating the secret key ({})", source.describe()))?;
                store = store.with_secret_key(key);
            }
            Admin::Local(Local::new(store).with_config(node_config(cli)?))
        }
    })
}

/// The settings a node started with these global options would have (the config
/// file's, on the defaults): what the store-direct path needs to act as a node
/// would (`[accounts] invites`, the public HTTP URL).
///
/// # Errors
/// The config file cannot be read or is not valid.
pub fn node_config(cli: &Cli) -> anyhow::Result<crate::config::NodeConfig> {
    let mut cfg = crate::config::NodeConfig::new(cli.database_url());
    if let Some(path) = &cli.config {
        crate::config::FileConfig::load(path)?.apply(&mut cfg)?;
    }
    Ok(cfg)
}

/// The running node with the newest heartbeat, if any heartbeat is recent.
///
/// # Errors
/// Store errors.
pub async fn live_node(store: &Store) -> anyhow::Result<Option<NodeRecord>> {
    let now = Utc::now();
    Ok(store
        .nodes()
        .await?
        .into_iter()
        .filter(|n| {
            (now - n.heartbeat_at)
                .to_std()
                .map_or(true, |age| age < LIVE)
        })
        .max_by_key(|n| n.heartbeat_at))
}

/// Opens the store the global options name, with the secret key when there is one.
/// For a write, a missing SQLite store (a first `user add` before the first `serve`)
/// and its data directory (0700) are created; a read fails instead, creating nothing.
///
/// # Errors
/// No store for a read, the data directory cannot be created, the store cannot be
/// opened, the key file is unreadable or not a key.
pub async fn open_store(cli: &Cli, access: Access) -> anyhow::Result<Store> {
    let url = cli.database_url();
    if let Some(path) = crate::config::sqlite_path(&url) {
        if !Path::new(path).exists() {
            anyhow::ensure!(
                access == Access::Write,
                "no Ferry store at {path} (check --data-dir or --database); nothing was created"
            );
            if cli.database.is_none() {
                create_data_dir(&cli.data_dir)?;
            }
        }
    }
    if cli.database.is_none() && cli.data_dir.is_dir() {
        // Ferry's own directory: a wider one is tightened, with a warning.
        crate::secrets::tighten(&cli.data_dir, 0o700).with_context(|| {
            format!("restricting the data directory {}", cli.data_dir.display())
        })?;
    }
    let store = Store::open(&url)
        .await
        .with_context(|| format!("opening the database ({})", crate::config::redact_url(&url)))?;
    let source = cli.key_source();
    match source.load(false) {
        Ok((key, _)) => Ok(store.with_secret_key(key)),
        // Without a key, what needs one says so when it comes to it.
        Err(SecretError::Missing { .. }) => Ok(store),
        Err(e) => Err(e).with_context(|| format!("loading the secret key ({})", source.describe())),
    }
}

/// Creates the data directory, readable by its owner only.
///
/// # Errors
/// It cannot be created.
pub fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data directory {} (--data-dir)", dir.display()))
}
