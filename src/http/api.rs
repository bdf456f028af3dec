//! The user API: what a logged-in person (or a script with their token) can see and
//! do. Every query is scoped by the session's user id; another user's network or
//! buffer is indistinguishable from a missing one (404).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::login::UserJson;
use super::openapi::ErrorJson;
use super::session::AuthUser;
use super::ApiError;
use crate::irc::{self, Casemapping};
use crate::services::Services;
use crate::store::{Buffer, HistoryQuery, Network, NetworkId, SearchQuery, StoredMessage, User};
use crate::user::{ConnState, NetworkStatus};

const HISTORY_DEFAULT: i64 = 100;
const HISTORY_MAX: i64 = 1000;
const SEARCH_DEFAULT: i64 = 50;
const SEARCH_MAX: i64 = 500;
/// How long to wait for a busy user actor's live status before showing none.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

type Params = Query<HashMap<String, String>>;

/// The session's user.
#[utoipa::path(get, path = "/api/me", responses(
    (status = 200, description = "The user.", body = UserJson),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson),
))]
pub async fn me(auth: AuthUser) -> Json<UserJson> {
    Json(UserJson::from(&auth.user))
}

// ---- networks and buffers ----

/// Live state of the user's networks, or none when the user does not run here.
async fn live_status(services: &Services, user: &User) -> Vec<NetworkStatus> {
    let Some(h) = services.users.get(user.id) else {
        return Vec::new();
    };
    match tokio::time::timeout(STATUS_TIMEOUT, h.status()).await {
        Ok(Ok(s)) => s,
        _ => Vec::new(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct NetworkJson {
    #[schema(value_type = i64)]
    id: NetworkId,
    name: String,
    addr: String,
    tls: bool,
    /// Current nick upstream, else the last one we had.
    nick: String,
    /// `state` (`connecting`, `registering`, `connected`, `disconnected`, `stopped`)
    /// and its details.
    #[serde(flatten)]
    state: ConnState,
    /// Channels we are in right now.
    channels: Vec<String>,
    /// Attached clients.
    clients: usize,
}

fn network_json(n: &Network, live: Option<&NetworkStatus>) -> NetworkJson {
    NetworkJson {
        id: n.id,
        name: n.name.clone(),
        addr: n.addr.clone(),
        tls: n.tls,
        nick: live.map_or_else(|| n.nick.clone(), |s| s.nick.clone()),
        state: live.map_or(ConnState::Stopped, |s| s.state.clone()),
        channels: live.map(|s| s.channels.clone()).unwrap_or_default(),
        clients: live.map_or(0, |s| s.clients),
    }
}

/// The user's networks with live connection state and nick.
#[utoipa::path(get, path = "/api/networks", responses(
    (status = 200, description = "Networks.", body = Vec<NetworkJson>),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson),
))]
pub async fn networks(
    State(services): State<Services>,
    auth: AuthUser,
) -> Result<Json<Vec<NetworkJson>>, ApiError> {
    let live = live_status(&services, &auth.user).await;
    let out = services
        .store
        .networks(auth.user.id)
        .await?
        .iter()
        .map(|n| network_json(n, live.iter().find(|s| s.network_id == n.id)))
        .collect();
    Ok(Json(out))
}

#[derive(Serialize, ToSchema)]
pub struct BufferJson {
    name: String,
    /// `channel` or `query`.
    kind: &'static str,
    joined: bool,
    /// Not known yet: the live topic is not part of the actors' status.
    topic: Option<String>,
    /// Messages after the read marker.
    unread: i64,
    /// Unread PRIVMSG/ACTION/NOTICE from others containing our nick.
    highlights: i64,
    read_marker: i64,
    last_message_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NetworkBuffersJson {
    network: String,
    nick: String,
    buffers: Vec<BufferJson>,
}

/// Per network: channels and queries with unread and highlight counts.
#[utoipa::path(get, path = "/api/buffers", responses(
    (status = 200, description = "Buffers by network.", body = Vec<NetworkBuffersJson>),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson),
))]
pub async fn buffers(
    State(services): State<Services>,
    auth: AuthUser,
) -> Result<Json<Vec<NetworkBuffersJson>>, ApiError> {
    let live = live_status(&services, &auth.user).await;
    let mut out = Vec::new();
    for n in services.store.networks(auth.user.id).await? {
        let status = live.iter().find(|s| s.network_id == n.id);
        let nick = status.map_or_else(|| n.nick.clone(), |s| s.nick.clone());
        let counts = services
            .store
            .unread_counts(auth.user.id, n.id, &nick)
            .await?;
        let in_channel = |b: &Buffer| match status {
            Some(s) => s
                .channels
                .iter()
                .any(|c| Casemapping::Rfc1459.eq(c.as_bytes(), &b.name)),
            None => b.joined,
        };
        let buffers = services
            .store
            .buffers_exact(n.id)
            .await?
            .iter()
            .map(|b| {
                let c = counts.iter().find(|c| c.key == b.key);
                BufferJson {
                    name: irc::decode(&b.name).into_owned(),
                    kind: b.kind.as_str(),
                    joined: in_channel(b),
                    topic: None,
                    unread: c.map_or(0, |c| c.unread),
                    highlights: c.map_or(0, |c| c.highlights),
                    read_marker: b.read_marker,
                    last_message_at: b.last_message_at.map(rfc3339),
                }
            })
            .collect();
        out.push(NetworkBuffersJson {
            network: n.name,
            nick,
            buffers,
        });
    }
    Ok(Json(out))
}

// ---- history and search ----

#[derive(Serialize, ToSchema)]
pub struct MessageJson {
    /// The message id (per-user sequence number): what paging and read markers use.
    id: i64,
    /// RFC 3339, milliseconds, UTC.
    time: String,
    network: String,
    buffer: String,
    sender: String,
    /// PRIVMSG NOTICE ACTION JOIN PART QUIT NICK KICK MODE TOPIC GAP
    kind: String,
    text: String,
    /// The line as received, decoded for display (UTF-8, else Latin-1).
    raw: String,
    msgid: Option<String>,
    /// Search only: `text` HTML-escaped, with each matched word in `<mark>…</mark>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    highlight: Option<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn message_json(m: StoredMessage, networks: &[Network]) -> MessageJson {
    MessageJson {
        id: m.seq,
        time: rfc3339(m.time),
        network: networks
            .iter()
            .find(|n| n.id == m.network_id)
            .map(|n| n.name.clone())
            .unwrap_or_default(),
        buffer: irc::decode(&m.buffer).into_owned(),
        sender: m.sender,
        kind: m.command,
        raw: irc::decode(&m.raw).into_owned(),
        text: m.text,
        msgid: m.msgid,
        highlight: None,
    }
}

fn param<'a>(p: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    p.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// Every query parameter free of control characters (`400` otherwise).
fn plain_params(p: &HashMap<String, String>) -> Result<(), ApiError> {
    for (name, value) in p {
        super::input::plain(name, value)?;
    }
    Ok(())
}

fn required<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    param(p, name).ok_or_else(|| ApiError::bad_request(format!("missing query parameter `{name}`")))
}

/// A non-negative message id.
fn id_param(p: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    param(p, name)
        .map(|v| match v.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "invalid query parameter `{name}`: expected a message id (a non-negative integer), got {v:?}"
            ))),
        })
        .transpose()
}

fn limit_param(p: &HashMap<String, String>, default: i64, max: i64) -> Result<i64, ApiError> {
    match param(p, "limit") {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "invalid query parameter `limit`: expected an integer from 1 to {max}, got {v:?}"
            ))),
        },
    }
}

/// An RFC 3339 time, or unix milliseconds.
fn time_param(p: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    param(p, name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .ok()
                .or_else(|| v.parse::<i64>().ok().and_then(DateTime::from_timestamp_millis))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid query parameter `{name}`: expected an RFC 3339 time or unix milliseconds, got {v:?}"
                    ))
                })
        })
        .transpose()
}

pub(super) fn find_network<'a>(
    networks: &'a [Network],
    name: &str,
) -> Result<&'a Network, ApiError> {
    networks
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no network {name:?}")))
}

/// The user's buffer `name` on `network`, matched case-insensitively.
pub(super) async fn find_buffer(
    services: &Services,
    network: &Network,
    name: &str,
) -> Result<Buffer, ApiError> {
    let folded = [Casemapping::Rfc1459, Casemapping::Ascii].map(|c| c.fold(name.as_bytes()));
    services
        .store
        .buffers(network.id)
        .await?
        .into_iter()
        .find(|b| b.name == name.as_bytes() || folded.contains(&b.key))
        .ok_or_else(|| {
            ApiError::not_found(format!("no buffer {name:?} on network {:?}", network.name))
        })
}

#[derive(Serialize, ToSchema)]
pub struct HistoryJson {
    /// Oldest first.
    messages: Vec<MessageJson>,
    /// Whether more messages exist in the paging direction: older ones (for `before`
    /// or no bound) or newer ones (for `after` alone).
    more: bool,
}

/// A page of a buffer's backlog, oldest first, paged by message id.
///
/// With `before`: the newest `limit` messages older than it (down to `after` if
/// given). With only `after`: the oldest `limit` messages newer than it. With neither:
/// the newest `limit`.
#[utoipa::path(get, path = "/api/history", params(
    ("network" = String, Query, description = "Network name."),
    ("buffer" = String, Query, description = "Channel or nick (case-insensitive)."),
    ("before" = Option<i64>, Query, description = "Exclusive upper message id."),
    ("after" = Option<i64>, Query, description = "Exclusive lower message id."),
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)."),
), responses(
    (status = 200, description = "A page.", body = HistoryJson),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
pub async fn history(
    State(services): State<Services>,
    auth: AuthUser,
    Query(p): Params,
) -> Result<Json<HistoryJson>, ApiError> {
    plain_params(&p)?;
    let network_name = required(&p, "network")?;
    let buffer_name = required(&p, "buffer")?;
    let before = id_param(&p, "before")?;
    let after = id_param(&p, "after")?;
    let limit = limit_param(&p, HISTORY_DEFAULT, HISTORY_MAX)?;
    let networks = services.store.networks(auth.user.id).await?;
    let network = find_network(&networks, network_name)?;
    let buffer = find_buffer(&services, network, buffer_name).await?;
    // Forward from `after` when only it is given; otherwise back from `before` (or
    // the newest message).
    let newest_first = !(after.is_some() && before.is_none());
    let mut rows = services
        .store
        .history(&HistoryQuery {
            user: auth.user.id,
            network: Some(network.id),
            buffer_key: Some(buffer.key),
            before,
            after,
            limit: limit + 1,
            newest_first,
            ..HistoryQuery::default()
        })
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if newest_first {
        rows.reverse();
    }
    Ok(Json(HistoryJson {
        messages: rows
            .into_iter()
            .map(|m| message_json(m, &networks))
            .collect(),
        more,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct SearchJson {
    /// Newest first.
    results: Vec<MessageJson>,
    /// Pass as `before` for the next (older) page; null when there is none.
    next_before: Option<i64>,
}

/// Full-text search of the user's backlog, newest first, every word must match.
#[utoipa::path(get, path = "/api/search", params(
    ("q" = String, Query, description = "Words to find."),
    ("network" = Option<String>, Query, description = "Network name."),
    ("buffer" = Option<String>, Query, description = "Buffer name (needs `network`)."),
    ("sender" = Option<String>, Query, description = "Exact nick, case-insensitive."),
    ("from" = Option<String>, Query, description = "Inclusive start: RFC 3339 or unix milliseconds."),
    ("to" = Option<String>, Query, description = "Inclusive end: RFC 3339 or unix milliseconds."),
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Page size (default 50)."),
    ("before" = Option<i64>, Query, description = "Exclusive upper message id (from `next_before`)."),
), responses(
    (status = 200, description = "Results.", body = SearchJson),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
pub async fn search(
    State(services): State<Services>,
    auth: AuthUser,
    Query(p): Params,
) -> Result<Json<SearchJson>, ApiError> {
    plain_params(&p)?;
    let text = required(&p, "q")?;
    if !text.chars().any(char::is_alphanumeric) {
        return Err(ApiError::bad_request(
            "invalid query parameter `q`: it has no word to search for",
        ));
    }
    let limit = limit_param(&p, SEARCH_DEFAULT, SEARCH_MAX)?;
    let before = id_param(&p, "before")?;
    let from = time_param(&p, "from")?;
    let to = time_param(&p, "to")?;
    let networks = services.store.networks(auth.user.id).await?;
    let network = param(&p, "network")
        .map(|n| find_network(&networks, n))
        .transpose()?;
    let buffer_key = match (param(&p, "buffer"), network) {
        (None, _) => None,
        (Some(b), Some(n)) => Some(find_buffer(&services, n, b).await?.key),
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "query parameter `buffer` needs `network`",
            ));
        }
    };
    let mut rows = services
        .store
        .search(&SearchQuery {
            user: auth.user.id,
            text: text.to_owned(),
            network: network.map(|n| n.id),
            buffer_key,
            sender: param(&p, "sender").map(str::to_owned),
            from,
            to,
            before,
            limit: limit + 1,
        })
        .await?;
    let next_before = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|m| m.seq)
    } else {
        None
    };
    let results = rows
        .into_iter()
        .map(|m| {
            let mut j = message_json(m, &networks);
            j.highlight = Some(mark(&j.text, text));
            j
        })
        .collect();
    Ok(Json(SearchJson {
        results,
        next_before,
    }))
}

/// HTML-escapes `text` and wraps each word that equals a word of `query`
/// (case-insensitively) in `<mark>…</mark>`. Words are runs of letters and digits,
/// as the full-text indexes of both backends tokenize them.
pub fn mark(text: &str, query: &str) -> String {
    let terms: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        if terms.contains(&word.to_lowercase()) {
            out.push_str("<mark>");
            out.push_str(word);
            out.push_str("</mark>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    flush(&mut word, &mut out);
    out
}

// ---- read markers ----

#[derive(Deserialize, ToSchema)]
pub struct ReadRequest {
    network: String,
    buffer: String,
    /// The id of the last message read.
    id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ReadJson {
    network: String,
    buffer: String,
    /// The marker after the update: never lower than before.
    read_marker: i64,
}

/// Move a buffer's read marker forward (never back).
#[utoipa::path(post, path = "/api/read", request_body = ReadRequest, responses(
    (status = 200, description = "The marker now.", body = ReadJson),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
pub async fn read(
    State(services): State<Services>,
    auth: AuthUser,
    body: Result<Json<ReadRequest>, JsonRejection>,
) -> Result<Json<ReadJson>, ApiError> {
    let Json(req) = body
        .map_err(|e| ApiError::bad_request(format!("invalid read request: {}", e.body_text())))?;
    if req.id < 0 {
        return Err(ApiError::bad_request(
            "invalid field `id`: expected a message id",
        ));
    }
    let networks = services.store.networks(auth.user.id).await?;
    let network = find_network(&networks, &req.network)?;
    let buffer = find_buffer(&services, network, &req.buffer).await?;
    if !id_exists(&services, auth.user.id, req.id).await? {
        return Err(ApiError::bad_request(format!(
            "invalid field `id`: {} is beyond the newest message",
            req.id
        )));
    }
    crate::markers::mark_read(
        &services,
        auth.user.id,
        (network.id, &network.name),
        &buffer,
        req.id,
        None,
    )
    .await?;
    Ok(Json(ReadJson {
        network: network.name.clone(),
        buffer: irc::decode(&buffer.name).into_owned(),
        read_marker: buffer.read_marker.max(req.id),
    }))
}

/// Whether `id` is at most the user's newest message id: the store's, or, when the
/// request names a newer one, the store's after the user's actor has flushed what
/// it relayed (a line a client was sent live may not be committed yet).
async fn id_exists(
    services: &Services,
    user: crate::store::UserId,
    id: i64,
) -> Result<bool, ApiError> {
    if id <= services.store.last_seq(user).await? {
        return Ok(true);
    }
    match services.users.get(user) {
        Some(h) if h.flush().await.unwrap_or(false) => {
            Ok(id <= services.store.last_seq(user).await?)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::mark;

    #[test]
    fn marks_whole_words_and_escapes() {
        assert_eq!(
            mark("Rust <rocks> & RUST-y rustacean", "rust"),
            "<mark>Rust</mark> &lt;rocks&gt; &amp; <mark>RUST</mark>-y rustacean"
        );
        assert_eq!(mark("a \"b\" c", "x"), "a &quot;b&quot; c");
        assert_eq!(mark("héllo wörld", "WÖRLD"), "héllo <mark>wörld</mark>");
    }
}
