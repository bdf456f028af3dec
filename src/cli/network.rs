use clap::{Args, Subcommand};

use super::admin::AdminOps;
use super::Cli;
use crate::admin::NetworkSpec;

// Parsed once per run: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Add an IRC network to a user; a running node connects it at once.
    Add(AddArgs),
    /// List a user's networks with their connection state.
    List {
        #[arg(long)]
        user: String,
    },
    /// Disconnect and delete a user's network (its backlog goes too).
    Remove {
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[arg(long)]
    user: String,
    /// The user's name for this network (used in PASS user/NETWORK:password).
    #[arg(long)]
    name: String,
    /// HOST:PORT of the IRC server.
    #[arg(long)]
    addr: String,
    /// Connect with TLS.
    #[arg(long)]
    tls: bool,
    /// Certificate check: verify (default), insecure, or pin:SHA256HEX.
    #[arg(long, value_name = "MODE")]
    tls_verify: Option<String>,
    #[arg(long)]
    nick: String,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    realname: Option<String>,
    /// SASL PLAIN credentials, ACCOUNT:PASSWORD.
    #[arg(long, value_name = "ACCOUNT:PASSWORD")]
    sasl: Option<String>,
    /// SASL EXTERNAL with this PEM file (client certificate and key).
    #[arg(long, value_name = "FILE")]
    sasl_cert: Option<String>,
    /// Local address to connect from.
    #[arg(long)]
    source_ip: Option<String>,
    /// Channels to join, comma-separated: '#a,#b'. A key follows a space: '#secret key'.
    #[arg(long)]
    channels: Vec<String>,
}

pub async fn run(cli: &Cli, cmd: &NetworkCommand, ops: &impl AdminOps) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Add(a) => {
            let spec = NetworkSpec {
                name: a.name.clone(),
                addr: a.addr.clone(),
                tls: a.tls,
                tls_verify: a.tls_verify.clone(),
                nick: a.nick.clone(),
                username: a.username.clone(),
                realname: a.realname.clone(),
                sasl: a.sasl.clone(),
                sasl_cert: a.sasl_cert.clone(),
                source_ip: a.source_ip.clone(),
                channels: a.channels.clone(),
            };
            // Checked here, so a bad spec fails alike with or without a running node.
            spec.to_new_network()?;
            ops.add_network(&a.user, &spec).await?;
            if !cli.json {
                println!("added network {} for {}", a.name, a.user);
            }
        }
        NetworkCommand::List { user } => {
            let rows = ops.list_networks(user).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<28} {:<4} {:<16} {:<14} CHANNELS",
                "NETWORK", "ADDRESS", "TLS", "NICK", "STATE"
            );
            for r in rows {
                let (state, nick, channels) = match &r.live {
                    Some(l) => (
                        l["state"].as_str().unwrap_or("?").to_owned(),
                        l["nick"].as_str().unwrap_or(&r.nick).to_owned(),
                        l["channels"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|c| c.as_str())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default(),
                    ),
                    None => ("not running".to_owned(), r.nick.clone(), String::new()),
                };
                println!(
                    "{:<16} {:<28} {:<4} {:<16} {:<14} {}",
                    r.name,
                    r.addr,
                    if r.tls { "yes" } else { "no" },
                    nick,
                    state,
                    channels
                );
            }
        }
        NetworkCommand::Remove { user, name, yes } => {
            if !yes {
                anyhow::bail!("this deletes network {name:?} of {user:?} with its backlog; run again with --yes to confirm");
            }
            ops.remove_network(user, name).await?;
            if !cli.json {
                println!("removed network {name} of {user}");
            }
        }
    }
    Ok(())
}
