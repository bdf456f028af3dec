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
mod serve;
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
}

impl Cli {
    pub fn database_url(&self) -> String {
        crate::config::database_url(self.database.as_deref(), &self.data_dir)
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Any failure, with a message for the person at the terminal.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => serve::run(&cli, args).await,
        Command::User(cmd) => match admin::connect(&cli).await? {
            Admin::Remote(ops) => user::run(&cli, cmd, &ops).await,
            Admin::Local(ops) => user::run(&cli, cmd, &ops).await,
        },
        Command::Network(cmd) => match admin::connect(&cli).await? {
            Admin::Remote(ops) => network::run(&cli, cmd, &ops).await,
            Admin::Local(ops) => network::run(&cli, cmd, &ops).await,
        },
        Command::Search(args) => search::run(&cli, args).await,
        Command::Node(cmd) => node::run(&cli, cmd).await,
        Command::Migrate(cmd) => migrate::run(&cli, cmd).await,
        Command::Limits(cmd) => match admin::connect(&cli).await? {
            Admin::Remote(ops) => limits::run(&cli, cmd, &ops).await,
            Admin::Local(ops) => limits::run(&cli, cmd, &ops).await,
        },
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
