//! `user update`: a user's password and auto-away.

use super::args::Args;
use super::{refuse, usage, Answer, Caller};
use crate::account;
use crate::store::User;

/// `user update`: your password, and your auto-away switch and text (`-away-message
/// ""`: back to the server's default).
pub(super) async fn user_update(
    caller: &Caller<'_>,
    user: &User,
    a: &Args,
    command: &str,
) -> Answer {
    let mut lines = Vec::new();
    let (auto_away, text) = (a.flag("auto-away"), a.flag("away-message"));
    if auto_away.is_some() || text.is_some() {
        let auto_away = match auto_away.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => None,
            Some("on" | "true" | "yes") => Some(true),
            Some("off" | "false" | "no") => Some(false),
            Some(other) => return Err(refuse(format!("-auto-away {other:?}: use on or off"))),
        };
        let change = account::AwayChange {
            auto_away,
            away_message: text.map(|t| Some(t).filter(|t| !t.is_empty())),
        };
        let view = account::update_away(caller.services, user, &change).await?;
        let text = view
            .away_message
            .unwrap_or_else(|| format!("{} (the default)", view.default_away_message));
        lines.push(format!(
            "auto-away {}; away message: {text}",
            if view.auto_away { "on" } else { "off" }
        ));
    }
    match (a.flag("password"), a.flag("current")) {
        (Some(new), Some(current)) => {
            let closed =
                account::change_password(caller.services, user, caller.peer, &current, &new, None)
                    .await?;
            lines.push(format!(
                "password changed; {closed} open web connection(s) closed"
            ));
        }
        (Some(_), None) => {
            return Err(refuse(format!(
                "give your current password too: {}",
                usage(command)
            )))
        }
        (None, Some(_)) => {
            return Err(refuse(format!(
                "-password is missing; usage: {}",
                usage(command)
            )))
        }
        (None, None) if lines.is_empty() => {
            return Err(refuse(format!(
                "nothing to change; usage: {}",
                usage(command)
            )))
        }
        (None, None) => {}
    }
    Ok(lines)
}
