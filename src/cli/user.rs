use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::client::{Admin, Target};
use super::Cli;
use crate::admin;

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

#[derive(Deserialize, serde::Serialize)]
struct UserInfo {
    name: String,
    admin: bool,
    networks: usize,
    running: bool,
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

pub async fn run(cli: &Cli, cmd: &UserCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(cli).await?;
    match cmd {
        UserCommand::Add {
            name,
            admin: is_admin,
        } => {
            admin::check_user_name(name)?;
            let password = read_password()?;
            match admin.target {
                Target::Node { .. } => {
                    let body = json!({ "name": name, "password": password, "admin": is_admin });
                    let _: Option<UserInfo> =
                        admin.call(Method::POST, "/users", Some(&body)).await?;
                }
                Target::Store => {
                    admin::create_user(&admin.store, name, &password, *is_admin).await?;
                }
            }
            if !cli.json {
                println!("created user {name}");
            }
        }
        UserCommand::List => {
            let users: Vec<UserInfo> = match admin.target {
                Target::Node { .. } => admin
                    .call::<Vec<UserInfo>>(Method::GET, "/users", None::<&()>)
                    .await?
                    .unwrap_or_default(),
                Target::Store => {
                    let mut out = Vec::new();
                    for u in admin.store.list_users().await? {
                        out.push(UserInfo {
                            networks: admin.store.networks(u.id).await?.len(),
                            name: u.name,
                            admin: u.is_admin,
                            running: false,
                        });
                    }
                    out
                }
            };
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
            match admin.target {
                Target::Node { .. } => {
                    let body = json!({ "retention_days": days, "retention_messages": messages });
                    let _: Option<serde_json::Value> = admin
                        .call(Method::PATCH, &format!("/users/{name}"), Some(&body))
                        .await?;
                }
                Target::Store => {
                    let user = admin::find_user(&admin.store, name).await?;
                    admin.store.set_retention(user.id, retention).await?;
                }
            }
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
            match admin.target {
                Target::Node { .. } => {
                    let _: Option<serde_json::Value> = admin
                        .call(Method::DELETE, &format!("/users/{name}"), None::<&()>)
                        .await?;
                }
                Target::Store => {
                    let user = admin::find_user(&admin.store, name).await?;
                    admin.store.delete_user(user.id).await?;
                }
            }
            if !cli.json {
                println!("removed user {name}");
            }
        }
    }
    Ok(())
}
