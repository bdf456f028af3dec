//! `ferry secrets rotate`: seal every stored secret again under a new key.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::admin::{live_node, open_store, Access};
use super::Cli;
use crate::secrets::SecretKey;

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Seal every stored secret again under a new key, in one transaction (all or
    /// nothing). Stop every node first; then make the new file every node's key
    /// file (docs/operations.md).
    Rotate {
        /// The new key file; created (0600, 32 random bytes) when missing.
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
}

pub async fn run(cli: &Cli, cmd: &SecretsCommand) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::Rotate { new_key_file } => {
            let store = open_store(cli, Access::Read).await?;
            let source = cli.key_source();
            let old = store
                .secret_key()
                .with_context(|| {
                    format!(
                        "rotating needs the current key, and there is none at {}",
                        source.describe()
                    )
                })?
                .clone();
            if let Some(n) = live_node(&store).await? {
                anyhow::bail!(
                    "node {:?} is running: stop every node before rotating (a running node \
                     seals with the key it started with)",
                    n.id
                );
            }
            let (new, _) = SecretKey::load_or_create(new_key_file)
                .with_context(|| format!("loading the new key ({})", new_key_file.display()))?;
            anyhow::ensure!(
                new.id() != old.id(),
                "{} holds the current key ({}): give a new file",
                new_key_file.display(),
                old.id()
            );
            let n = store.rotate_secrets(&new).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "resealed": n, "old_key": old.id(), "new_key": new.id() })
                );
            } else {
                println!(
                    "resealed {n} secrets under key {} (was {}).\n\
                     Now make {} the key of every node (replace {} with it) before starting them.",
                    new.id(),
                    old.id(),
                    new_key_file.display(),
                    source.describe(),
                );
            }
        }
    }
    Ok(())
}
