//! Where a user's session runs, for the `moved` event.

use crate::node::Node;
use crate::store::UserId;

/// The websocket URL of the node that runs `user`'s session, when it is another
/// node and known; `None` means "here, or nobody owns it yet" (failover pending:
/// the client retries).
pub async fn owner_ws_url(node: &Node, user: UserId) -> Option<String> {
    if node.user(user).is_some() {
        return None;
    }
    match node.owner_of(user).await {
        Ok(owner) if !owner.local => owner.http_url.as_deref().map(ws_url),
        _ => None,
    }
}

/// The websocket URL of a node whose HTTP base URL is `http` (`http://h:p` →
/// `ws://h:p/ws`).
pub fn ws_url(http: &str) -> String {
    let base = http.trim_end_matches('/');
    let base = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    };
    format!("{base}/ws")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ws_urls() {
        assert_eq!(super::ws_url("http://a:1/"), "ws://a:1/ws");
        assert_eq!(
            super::ws_url("https://ferry.example"),
            "wss://ferry.example/ws"
        );
    }
}
