//! Where a user's session runs, for the `moved` event.

use crate::services::{ws_url, Services};
use crate::store::UserId;

/// The websocket URL of the node that runs `user`'s session, when it is another
/// node and known; `None` means "here, or nobody owns it yet" (failover pending:
/// the client retries).
pub async fn owner_ws_url(services: &Services, user: UserId) -> Option<String> {
    if services.users.get(user).is_some() {
        return None;
    }
    match services.owner_of(user).await {
        Ok(owner) if !owner.local => owner.http_url.as_deref().map(ws_url),
        _ => None,
    }
}
