//! `GET /ws`: the websocket of the web client. The protocol is documented in
//! `docs/websocket.md`; this module is its only implementation.
//!
//! A websocket session is a downstream like an IRC client: it attaches to every
//! network of its user (client name `web`), replays what the client missed from the
//! store, then relays live lines as JSON events. Files:
//!
//! - `command`: client → server frames, checked so no name smuggles a second IRC line;
//! - `event`: server → client events, and IRC line → event translation;
//! - `session`: one connection's lifecycle (attach, hello, replay, then the loop);
//! - `attach`, `hello`, `replay`, `live`, `requests`, `ending`: its stages — attach to
//!   every network, the snapshot, the missed backlog, live lines, the client's
//!   commands, and how it ends (`moved`, too slow, shutdown);
//! - `out`: the bounded writer (slow clients are closed, not buffered);
//! - `owner`: where a moved session went.
//!
//! Other parts reach a user's sessions through the node's socket registry
//! (`services::Sockets`: read markers, `moved`, test drops).

mod attach;
// Public for the fuzz target `fuzz/fuzz_targets/ws_command.rs`.
pub mod command;
mod ending;
mod event;
mod hello;
mod live;
mod out;
mod owner;
mod replay;
mod requests;
mod session;

use std::collections::HashMap;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;

pub use owner::owner_ws_url;

use super::session::{request_token, session_end, session_user, token_hash};
use super::ApiError;
use crate::services::Services;

/// Largest command frame the protocol accepts. A larger one (up to
/// [`TRANSPORT_MAX`]) is answered with an `error` event (`too_large`) and the
/// socket stays open.
pub const MAX_FRAME: usize = 64 * 1024;
/// Largest websocket message at all; beyond it the connection is closed with
/// status 1009 (message too big) by the websocket layer.
pub const TRANSPORT_MAX: usize = 1024 * 1024;

/// Upgrades an authenticated request to a websocket session.
///
/// The session comes from `?token=`, `Authorization: Bearer` or the session cookie.
/// A cookie-authenticated upgrade must come from a page of the same origin (the
/// `Origin` header's host equals `Host`), so another site cannot borrow the cookie.
pub async fn ws(
    State(services): State<Services>,
    Query(p): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let by_cookie = !p.contains_key("token") && !headers.contains_key(header::AUTHORIZATION);
    let token = match p.get("token") {
        Some(t) => Some(t.clone()),
        None => request_token(&headers),
    }
    .ok_or_else(ApiError::unauthorized)?;
    if by_cookie && !same_origin(&headers) {
        return Err(ApiError::forbidden_origin());
    }
    let user = session_user(&services, &token)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let ends = session_end(&services, &token)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let last_id = match p.get("last_id").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid query parameter `last_id`: expected a message id, got {v:?}"
            ))
        })?),
    };
    Ok(upgrade
        .max_message_size(TRANSPORT_MAX)
        .max_frame_size(TRANSPORT_MAX)
        .on_upgrade(move |socket| {
            let login = session::Login {
                token_hash: token_hash(&token),
                ends,
            };
            let sockets = services.sockets.clone();
            sockets.track(session::run(services, user, login, last_id, socket))
        }))
}

/// No `Origin` (not a browser) or an `Origin` whose host is the request's `Host`.
pub(in crate::http) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}
