//! The `ferry` command line: one binary, a subcommand per role.
//!
//! Admin commands act through the running node when one uses the same store
//! (found in the store's node list), so changes reach live sessions at once;
//! with no node running they act on the store directly. Each command is written
//! once, against `admin::AdminOps` (`admin::Remote` or `admin::Local`).

mod admin;
mod limits;
mod migrate;
mod network;
mod node;
mod search;
mod secrets;
mod serve;
mod upgrade;
mod user;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use admin::Admin;

pub use serve::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "An IRC cloud bouncer whose sessions can move between machines"
)]
pub struct Cli {
    /// Config file (TOML); see ferry.example.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where Ferry keeps its SQLite database by default.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "./ferry-data"
    )]
    pub data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB (default: SQLite in the data dir).
    #[arg(long, global = true, value_name = "URL", env = "FERRY_DATABASE")]
    pub database: Option<String>,
    /// The secret key that seals stored upstream passwords: 64 hex digits, created
    /// (0600) by the first `serve` when missing. Every node of a cluster needs the
    /// same key. Default: `<data-dir>.key` beside the data directory; the variable
    /// FERRY_SECRET_KEY may hold the key itself instead.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FERRY_SECRET_KEY_FILE"
    )]
    pub secret_key_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Ferry node.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Manage a user's IRC networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Search a user's backlog (newest first).
    Search(search::SearchArgs),
    /// Drain a node or move users between nodes (batches, preflight, rollback).
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
    /// Inspect the nodes using this store.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Per-network rate configuration: session slots, connect rate, message rate.
    #[command(subcommand)]
    Limits(limits::LimitsCommand),
    /// The secret key that seals stored upstream passwords: rotation.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Replace a running node's process with a new binary in place (also: SIGUSR2 to
    /// `ferry serve`): listening sockets move, node id and lease stay.
    Upgrade(upgrade::UpgradeArgs),
}

impl Cli {
    pub fn database_url(&self) -> String {
        crate::config::database_url(self.database.as_deref(), &self.data_dir)
    }

    /// Where the secret key is: `--secret-key-file`, else `FERRY_SECRET_KEY`, else
    /// `<data-dir>.key`.
    pub fn key_source(&self) -> crate::secrets::KeySource {
        crate::secrets::KeySource::resolve(
            self.secret_key_file.as_deref(),
            crate::secrets::default_key_file(&self.data_dir),
        )
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Any failure, with a message for the person at the terminal.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Everything Ferry creates (store, key file) is its owner's alone.
    // SAFETY: umask only sets the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    match &cli.command {
        Command::Serve(args) => serve::run(&cli, args).await,
        Command::User(cmd) => match admin::connect(&cli, cmd.access()).await? {
            Admin::Remote(ops) => user::run(&cli, cmd, &ops).await,
            Admin::Local(ops) => user::run(&cli, cmd, &ops).await,
        },
        Command::Network(cmd) => match admin::connect(&cli, cmd.access()).await? {
            Admin::Remote(ops) => network::run(&cli, cmd, &ops).await,
            Admin::Local(ops) => network::run(&cli, cmd, &ops).await,
        },
        Command::Search(args) => search::run(&cli, args).await,
        Command::Node(cmd) => node::run(&cli, cmd).await,
        Command::Migrate(cmd) => migrate::run(&cli, cmd).await,
        Command::Limits(cmd) => match admin::connect(&cli, cmd.access()).await? {
            Admin::Remote(ops) => limits::run(&cli, cmd, &ops).await,
            Admin::Local(ops) => limits::run(&cli, cmd, &ops).await,
        },
        Command::Secrets(cmd) => secrets::run(&cli, cmd).await,
        Command::Upgrade(args) => upgrade::run(&cli, args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
