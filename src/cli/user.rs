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
        name: String,
        /// May use the admin API.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
    /// Set how much backlog a user keeps (unset options mean unlimited).
    Retention {
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
    admin::check_password(&pw)?;
    Ok(pw)
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
        UserCommand::List => {
            let users = ops.list_users().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!("{:<24} {:<6} {:>8} RUNNING", "USER", "ADMIN", "NETWORKS");
                for u in users {
                    println!(
                        "{:<24} {:<6} {:>8} {}",
                        u.name,
                        if u.admin { "yes" } else { "no" },
                        u.networks,
                        if u.running { "yes" } else { "no" }
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
