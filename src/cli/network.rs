use std::io::BufRead;

use anyhow::Context;
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
        /// Whose networks.
        #[arg(long)]
        user: String,
    },
    /// Disconnect and delete a user's network (its backlog goes too).
    Remove {
        /// Whose network.
        #[arg(long)]
        user: String,
        /// The network's name (as given to `network add --name`).
        #[arg(long)]
        name: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The user the network is added to.
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
    /// The nick to use on this network.
    #[arg(long)]
    nick: String,
    /// The username (ident) sent in USER (default: the nick).
    #[arg(long)]
    username: Option<String>,
    /// The real name sent in USER (default: the nick).
    #[arg(long)]
    realname: Option<String>,
    /// SASL PLAIN: ACCOUNT, with the password from --sasl-password-file or
    /// --sasl-password-stdin; or ACCOUNT:PASSWORD (visible to other local users in
    /// `ps` while the command runs).
    #[arg(long, value_name = "ACCOUNT[:PASSWORD]")]
    sasl: Option<String>,
    /// Read the SASL password from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "sasl_password_stdin")]
    sasl_password_file: Option<std::path::PathBuf>,
    /// Read the SASL password from standard input (one line).
    #[arg(long)]
    sasl_password_stdin: bool,
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

impl NetworkCommand {
    /// Whether the command only reads (then it never creates a store).
    pub fn access(&self) -> super::admin::Access {
        match self {
            NetworkCommand::List { .. } => super::admin::Access::Read,
            _ => super::admin::Access::Write,
        }
    }
}

/// The SASL PLAIN credentials, `ACCOUNT:PASSWORD`, with the password from where the
/// options say.
fn sasl(a: &AddArgs) -> anyhow::Result<Option<String>> {
    let from_elsewhere = a.sasl_password_file.is_some() || a.sasl_password_stdin;
    let Some(given) = &a.sasl else {
        anyhow::ensure!(
            !from_elsewhere,
            "--sasl-password-file and --sasl-password-stdin need --sasl ACCOUNT"
        );
        return Ok(None);
    };
    if !from_elsewhere {
        return Ok(Some(given.clone()));
    }
    anyhow::ensure!(
        !given.contains(':'),
        "--sasl takes only the ACCOUNT when the password is read from a file or standard input"
    );
    let text = match &a.sasl_password_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the SASL password from {}", path.display()))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the SASL password from standard input")?;
            line
        }
    };
    let password = text.lines().next().unwrap_or("");
    anyhow::ensure!(!password.is_empty(), "the SASL password is empty");
    Ok(Some(format!("{given}:{password}")))
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
                sasl: sasl(a)?,
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
                "{:<16} {:<28} {:<4} {:<16} {:<14} {:<24} DETAIL",
                "NETWORK", "ADDRESS", "TLS", "NICK", "STATE", "CHANNELS"
            );
            for r in rows {
                let detail = r.live.as_ref().map(state_detail).unwrap_or_default();
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
                    "{:<16} {:<28} {:<4} {:<16} {:<14} {:<24} {}",
                    r.name,
                    r.addr,
                    if r.tls { "yes" } else { "no" },
                    nick,
                    state,
                    channels,
                    detail
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

/// What the STATE column (`connecting`, `registering`, `connected`,
/// `disconnected`, `stopped`) cannot say: why the last attempt failed and when
/// the next one is due (`backing off` while a retry is scheduled).
fn state_detail(live: &serde_json::Value) -> String {
    let text = |k: &str| live[k].as_str().map(str::to_owned);
    match live["state"].as_str() {
        Some("connecting" | "registering") => text("last_error")
            .map(|e| format!("last error: {e}"))
            .unwrap_or_default(),
        Some("disconnected") => {
            let reason = text("reason").unwrap_or_default();
            match (live["retrying"].as_bool(), text("retry_at")) {
                (Some(true), Some(at)) => format!("backing off: {reason}; next attempt {at}"),
                (Some(true), None) => format!("backing off: {reason}"),
                _ => format!("{reason}; not retrying"),
            }
        }
        _ => String::new(),
    }
}
