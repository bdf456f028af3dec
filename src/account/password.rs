//! A user's password change.

use std::net::IpAddr;

use super::AccountError;
use crate::auth::Door;
use crate::services::{Control, Services};
use crate::store::User;

/// Changes the user's password. The current one is checked through the login guard
/// (its budgets per address and account); the new one must meet `[auth]
/// min_password_len` and is hashed on the guard's bounded pool. Every other login
/// session of the user ends (`keep`: the token hash of the one that asked, if any) and
/// all the user's websockets on this node close. Returns how many closed.
///
/// # Errors
/// `Invalid` (too short), `WrongPassword`, `Refused`, `Store`.
pub async fn change_password(
    services: &Services,
    user: &User,
    from: IpAddr,
    current: &str,
    new: &str,
    keep: Option<&[u8; 32]>,
) -> Result<usize, AccountError> {
    let min = services.guard.settings().min_password_len;
    crate::auth::check_new_password(new, min).map_err(AccountError::Invalid)?;
    let attempt = services
        .guard
        .admit(Door::PasswordChange, from, &user.name)
        .map_err(AccountError::Refused)?;
    let stored = services.store.user(user.id).await?;
    let hash = stored.as_ref().map(|u| u.password_hash.clone());
    if !attempt
        .verify(hash, current)
        .await
        .map_err(AccountError::Refused)?
    {
        return Err(AccountError::WrongPassword);
    }
    let hash = services
        .guard
        .hasher
        .hash(new.to_owned())
        .await
        .map_err(|busy| AccountError::Refused(busy.into()))?;
    services.store.set_password(user.id, &hash).await?;
    services.store.delete_user_sessions(user.id, keep).await?;
    let closed = services
        .sockets
        .control(user.id, Control::End("your password changed".into()));
    tracing::info!(user = %user.name, addr = %from, websockets = closed, "password changed");
    Ok(closed)
}
