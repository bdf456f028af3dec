use std::io::{BufRead, IsTerminal};

use super::admin::AdminOps;
use super::Cli;
use crate::admin;
use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        /// The new user's name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// May use the admin API.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
    /// Print a one-time sign-up URL: whoever opens it chooses a name and password in
    /// the web client (needs `[accounts] invites = true`).
    Invite {
        /// How long the link works: a number and s, m, h, d or w.
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = crate::invite::parse_duration)]
        expires: std::time::Duration,
        /// The account it creates may use the admin API.
        #[arg(long)]
        admin: bool,
    },
    /// Set how much backlog a user keeps (unset options mean unlimited).
    Retention {
        /// The user whose backlog is limited.
        name: String,
        /// Delete messages older than this many days.
        #[arg(long)]
        days: Option<i64>,
        /// Keep only this many newest messages.
        #[arg(long)]
        messages: Option<i64>,
    },
    /// Delete a user, their networks and backlog.
    Remove {
        /// The user to delete.
        name: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let pw = if stdin.is_terminal() {
        rpassword::prompt_password("Password: ")?
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line
    };
    let pw = pw.trim_end_matches(['\r', '\n']).to_owned();
    // The node checks its own `[auth] min_password_len`; this catches the default early.
    admin::check_password(&pw, crate::auth::MIN_PASSWORD_LEN)?;
    Ok(pw)
}

impl UserCommand {
    /// Whether the command only reads (then it never creates a store).
    pub fn access(&self) -> super::admin::Access {
        match self {
            UserCommand::List => super::admin::Access::Read,
            _ => super::admin::Access::Write,
        }
    }
}

pub async fn run(cli: &Cli, cmd: &UserCommand, ops: &impl AdminOps) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            admin: is_admin,
        } => {
            admin::check_user_name(name)?;
            let password = read_password()?;
            ops.add_user(name, &password, *is_admin).await?;
            if !cli.json {
                println!("created user {name}");
            }
        }
        UserCommand::Invite { expires, admin } => {
            let invite = ops.create_invite(*admin, *expires).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&invite)?);
            } else {
                println!("{}", invite.url);
                eprintln!(
                    "one-time sign-up link{}, valid until {} (shown once: the store keeps only a hash)",
                    if invite.admin { " for an admin account" } else { "" },
                    invite.expires_at
                );
            }
        }
        UserCommand::List => {
            let users = ops.list_users().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!(
                    "{:<24} {:<6} {:>8} {:<7} NODE",
                    "USER", "ADMIN", "NETWORKS", "RUNNING"
                );
                for u in users {
                    println!(
                        "{:<24} {:<6} {:>8} {:<7} {}",
                        u.name,
                        if u.admin { "yes" } else { "no" },
                        u.networks,
                        if u.running { "yes" } else { "no" },
                        u.node.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        UserCommand::Retention {
            name,
            days,
            messages,
        } => {
            let retention = admin::retention(*days, *messages)?;
            ops.set_retention(name, retention).await?;
            if !cli.json {
                let days = days.map_or("unlimited days".to_owned(), |d| format!("{d} days"));
                let messages =
                    messages.map_or("unlimited messages".to_owned(), |m| format!("{m} messages"));
                println!("{name} keeps {days} of backlog, at most {messages}");
            }
        }
        UserCommand::Remove { name, yes } => {
            if !yes {
                anyhow::bail!("this deletes user {name:?} with their networks and backlog; run again with --yes to confirm");
            }
            ops.remove_user(name).await?;
            if !cli.json {
                println!("removed user {name}");
            }
        }
    }
    Ok(())
}
