//! BouncerServ's commands for admins (`user create`, `user delete`, `user status`,
//! `server status`), through the shared admin operations of the `admin` module. The
//! caller has been checked to be an admin.

use super::{one_word, refuse, Answer, Args, Caller, Refusal};
use crate::admin;
use crate::store::User;

pub(super) async fn run(
    caller: &Caller<'_>,
    user: &User,
    command: &str,
    args: impl Fn(&[&str]) -> Result<Args, Refusal>,
) -> Answer {
    let services = caller.services;
    match command {
        "user create" => {
            let a = args(&["username", "password", "admin"])?;
            super::no_words(&a, command)?;
            let (Some(name), Some(password)) = (a.flag("username"), a.flag("password")) else {
                return Err(refuse(format!("usage: {}", super::usage(command))));
            };
            let is_admin = a.flags.contains_key("admin");
            let created =
                admin::create_user(&services.store, &services.guard, &name, &password, is_admin)
                    .await?;
            // Placement, as the admin API does: the active node with the most headroom
            // runs the new user.
            if let Err(e) = services.place_user(created.id, &created.name).await {
                tracing::error!(user = %created.name, error = %e, "placing a user created over BouncerServ");
            }
            tracing::info!(user = %created.name, admin = is_admin, by = %user.name, "user created over BouncerServ");
            Ok(vec![format!(
                "created user {:?}{}",
                created.name,
                if is_admin { " (admin)" } else { "" }
            )])
        }
        "user delete" => {
            let name = one_word(&args(&[])?, command)?;
            if name == user.name {
                return Err(refuse("you cannot delete yourself; ask another admin"));
            }
            let target = admin::find_user(&services.store, &name).await?;
            // A user another live node runs is that node's to stop; the admin API and
            // the CLI pass the deletion on to it.
            if let Some(node) = services
                .store
                .owner(target.id)
                .await?
                .and_then(|o| o.node_id)
            {
                if node != *services.node.id && services.store.node_is_live(&node).await? {
                    return Err(refuse(format!(
                        "{name:?} runs on node {node:?}: remove them with `ferry user remove \
                         {name}` or the admin API, which reach that node"
                    )));
                }
            }
            services.users.stop(target.id, None).await;
            services.store.delete_user(target.id).await?;
            tracing::info!(user = %target.name, by = %user.name, "user deleted over BouncerServ");
            Ok(vec![format!("deleted user {name:?}")])
        }
        "user status" => {
            super::no_words(&args(&[])?, command)?;
            let running: Vec<_> = services.users.running();
            let mut out = Vec::new();
            for u in services.store.list_users().await? {
                let networks = services.store.networks(u.id).await?.len();
                let here = running.iter().any(|r| r.id == u.id && !r.closed);
                out.push(format!(
                    "{}{}: {networks} network(s){}",
                    u.name,
                    if u.is_admin { " (admin)" } else { "" },
                    if here { ", running on this node" } else { "" }
                ));
            }
            Ok(out)
        }
        "server status" => {
            super::no_words(&args(&[])?, command)?;
            let users = services.store.list_users().await?.len();
            let running = services
                .users
                .running()
                .iter()
                .filter(|r| !r.closed)
                .count();
            let nodes = services.store.nodes().await?.len();
            Ok(vec![format!(
                "node {}: {running} of {users} user(s) running here; {nodes} node(s) in the cluster",
                services.node.id
            )])
        }
        _ => Err(refuse(format!("unknown command {command:?}"))),
    }
}
