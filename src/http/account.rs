//! The user API's account routes: a logged-in person manages their own networks,
//! channels and password (`POST /api/networks`, `GET`/`PATCH`/`DELETE
//! /api/networks/{name}`, `POST`/`DELETE /api/networks/{name}/channels…`, `POST
//! /api/me/password`). The operations, their checks and their errors are the
//! `account` module's; this file is only the HTTP door to them.
//!
//! **On whichever node the request lands.** Unlike the read-only user routes, which
//! answer 421 `moved` for a user another node runs, these pass the request on to the
//! owner node (its advertised HTTP address, the same session token) and answer with
//! its answer, so the change reaches the running session at once, as admin changes do
//! (`http/admin.rs`). A passed-on request carries `x-ferry-forwarded` with the
//! receiving node's admin token (derived with the secret key, which only nodes
//! hold): the receiver acts on it itself, and a client cannot make a node act behind
//! the owner's back by setting the header; `x-ferry-client` names the address the
//! request came from (trusted only with a valid `x-ferry-forwarded`), so the owner's
//! login guard counts a password check against the person and not the node. If the
//! owner does not answer, nothing is changed and the caller gets 503
//! `owner_unreachable`.
//!
//! Cookie-authenticated requests must come from this server's own pages (`Origin`
//! matches `Host`; the cookie is also `SameSite=Strict`), like the websocket.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::ErrorJson;
use super::session::{self, AuthUser};
use super::ApiError;
use crate::account::{
    self, AccountError, AwayChange, AwayView, ChannelChange, ChannelUpdate, NetworkChange,
    NewNetworkSpec,
};
use crate::auth::Refused;
use crate::migrate::FORWARDED;
use crate::services::Services;
use crate::store::{Network, NodeRecord, Sasl};

/// How long a request passed on to the owner node may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Who asks, and where their session runs.
pub enum Caller {
    /// This node acts: it runs the user, nobody runs it, or the request was passed on.
    Here(AuthUser),
    /// Another live node runs the user: pass the request on to it.
    Elsewhere {
        node: Box<NodeRecord>,
        token: String,
        /// The address the request came from, passed on with it.
        client: Option<IpAddr>,
    },
}

impl Caller {
    /// Hands back the session when this node acts; otherwise passes the request on
    /// to the node that runs the user and ends the handler with that node's answer
    /// ([`Refusal::PassedOn`]), so a handler starts with `caller.act(…).await?`.
    async fn act(
        self,
        services: &Services,
        method: Method,
        uri: &OriginalUri,
        body: Bytes,
    ) -> Result<AuthUser, Refusal> {
        match self {
            Caller::Here(auth) => Ok(auth),
            Caller::Elsewhere {
                node,
                token,
                client,
            } => Err(pass_on(services, &node, &token, client, method, uri, body)
                .await
                .map_or_else(Refusal::Api, Refusal::PassedOn)),
        }
    }
}

/// The header of a passed-on request that names the address its client called from,
/// so the owner's login guard counts a password check against the person's address
/// and not against the node that passed it on. Trusted only on a passed-on request.
const CLIENT: &str = "x-ferry-client";

/// Whether the request was passed on by another node of this cluster: it carries
/// this node's admin token in `x-ferry-forwarded`.
fn passed_on(services: &Services, parts: &Parts) -> bool {
    parts
        .headers
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| services.node.admin_token.matches(v))
}

/// The address of the client a request comes from: the connection's peer, or for a
/// request another node passed on, the address that node says it came from.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Services> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        services: &Services,
    ) -> Result<ClientIp, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| ApiError::internal("no peer address"))?;
        if passed_on(services, parts) {
            if let Some(ip) = parts
                .headers
                .get(CLIENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
            {
                return Ok(ClientIp(ip));
            }
        }
        Ok(ClientIp(peer))
    }
}

impl FromRequestParts<Services> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        services: &Services,
    ) -> Result<Caller, ApiError> {
        let by_cookie = !parts.headers.contains_key(header::AUTHORIZATION);
        let token = session::request_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        if by_cookie && !super::ws::same_origin(&parts.headers) {
            return Err(ApiError::forbidden_origin());
        }
        let user = session::session_user(services, &token)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        if passed_on(services, parts) || services.users.get(user.id).is_some() {
            return Ok(Caller::Here(AuthUser { user, token }));
        }
        match owner_elsewhere(services, user.id).await? {
            Some(node) => Ok(Caller::Elsewhere {
                node: Box::new(node),
                token,
                client: parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip()),
            }),
            None => Ok(Caller::Here(AuthUser { user, token })),
        }
    }
}

/// The live node other than this one that owns `user`, if any.
async fn owner_elsewhere(
    services: &Services,
    user: crate::store::UserId,
) -> Result<Option<NodeRecord>, ApiError> {
    let Some(owner) = services.store.owner(user).await?.and_then(|o| o.node_id) else {
        return Ok(None);
    };
    if owner == *services.node.id || !services.store.node_is_live(&owner).await? {
        return Ok(None);
    }
    Ok(services
        .store
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.id == owner))
}

/// Passes the request on to `node` and answers with its answer (status and body).
async fn pass_on(
    services: &Services,
    node: &NodeRecord,
    token: &str,
    client: Option<IpAddr>,
    method: Method,
    uri: &OriginalUri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let unreachable = |why: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "owner_unreachable",
            format!(
                "your session runs on node {:?}, which did not answer ({why}); nothing was \
                 changed: try again in a moment",
                node.id
            ),
        )
    };
    let node_token = services
        .store
        .secret_key()
        .ok_or_else(|| ApiError::internal("no secret key to pass a request on"))?
        .recover_admin_token(&node.id, &node.admin_token)
        .map_err(|e| unreachable(e.to_string()))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let http = reqwest::Client::builder()
        .timeout(FORWARD_TIMEOUT)
        .build()
        .map_err(ApiError::internal)?;
    let method =
        reqwest::Method::from_bytes(method.as_str().as_bytes()).map_err(ApiError::internal)?;
    let mut req = http
        .request(method, format!("{}{path}", node.admin_url))
        .bearer_auth(token)
        .header(FORWARDED, node_token);
    if let Some(ip) = client {
        req = req.header(CLIENT, ip.to_string());
    }
    let resp = req
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).cloned();
    let bytes = resp.bytes().await.map_err(|e| unreachable(e.to_string()))?;
    let mut out = (status, bytes.to_vec()).into_response();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::RETRY_AFTER, retry_after),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            out.headers_mut().insert(name, v);
        }
    }
    Ok(out)
}

/// A JSON body, or `400 bad_request` in the API's error shape.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// An account error (or a request the API refused before it reached one) as the API
/// answers it.
pub enum Refusal {
    Account(AccountError),
    Api(ApiError),
    /// Not a refusal: the node that runs the user answered the request this node
    /// passed on, and that answer goes back as it is.
    PassedOn(Response),
}

impl From<AccountError> for Refusal {
    fn from(e: AccountError) -> Refusal {
        Refusal::Account(e)
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Api(e)
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> ApiError {
        let status = match &e {
            AccountError::Invalid(_) => StatusCode::BAD_REQUEST,
            AccountError::ServerNotAllowed(_) | AccountError::WrongPassword => {
                StatusCode::FORBIDDEN
            }
            AccountError::TooManyNetworks(_) | AccountError::Exists(_) => StatusCode::CONFLICT,
            AccountError::NotFound(_) => StatusCode::NOT_FOUND,
            AccountError::Refused(Refused::Throttled { .. }) => StatusCode::TOO_MANY_REQUESTS,
            AccountError::Refused(Refused::Busy) | AccountError::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AccountError::Store(cause) => return ApiError::internal(cause),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::PassedOn(r) => r,
            Refusal::Api(e) => e.into_response(),
            Refusal::Account(e) => {
                let retry = match &e {
                    AccountError::Refused(r) => Some(r.retry_after_secs()),
                    _ => None,
                };
                let mut resp = ApiError::from(e).into_response();
                if let Some(secs) = retry {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                resp
            }
        }
    }
}

/// A network's settings as its user sees them (the SASL password never comes back).
#[derive(Serialize, ToSchema)]
pub struct NetworkSettings {
    name: String,
    addr: String,
    tls: bool,
    /// `verify`, `insecure` or `pin:SHA256HEX`.
    tls_verify: String,
    /// The nick Ferry asks for.
    nick: String,
    username: Option<String>,
    realname: Option<String>,
    /// The SASL PLAIN account, if SASL is set (`external`: a certificate the operator set).
    sasl_account: Option<String>,
    /// Whether Ferry keeps it connected.
    enabled: bool,
    /// The channels it rejoins, with whether each has a key.
    channels: Vec<ChannelSettings>,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelSettings {
    name: String,
    has_key: bool,
}

async fn settings(services: &Services, n: &Network) -> Result<NetworkSettings, ApiError> {
    let channels = services
        .store
        .buffers(n.id)
        .await?
        .into_iter()
        .filter(|b| b.joined)
        .map(|b| ChannelSettings {
            name: String::from_utf8_lossy(&b.name).into_owned(),
            has_key: b.chan_key.is_some(),
        })
        .collect();
    Ok(NetworkSettings {
        name: n.name.clone(),
        addr: n.addr.clone(),
        tls: n.tls,
        tls_verify: n.tls_verify.to_db(),
        nick: n.nick.clone(),
        username: n.username.clone(),
        realname: n.realname.clone(),
        sasl_account: match &n.sasl {
            Some(Sasl::Plain { username, .. }) => Some(username.clone()),
            Some(Sasl::External { .. }) => Some("external".into()),
            None => None,
        },
        enabled: n.enabled,
        channels,
    })
}

/// Add a network to your account; it connects at once.
///
/// Cookie sessions only from this server's pages. Refused with `server_not_allowed`
/// (403) when the operator's allow list (`[accounts] allowed_servers`) does not name
/// the server, and `too_many_networks` (409) at `[accounts] max_networks_per_user`.
#[utoipa::path(post, path = "/api/networks", request_body = NewNetworkSpec, responses(
    (status = 201, description = "Added; it connects.", body = NetworkSettings),
    (status = 400, description = "A field is invalid; the message names it.", body = ErrorJson),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson),
    (status = 403, description = "`server_not_allowed`: not on the operator's allow list; `forbidden_origin`: a cookie from another site's page.", body = ErrorJson),
    (status = 409, description = "`conflict`: you have a network of this name; `too_many_networks`: at the operator's cap.", body = ErrorJson),
    (status = 503, description = "`owner_unreachable`: the node running your session did not answer; nothing changed.", body = ErrorJson),
))]
pub async fn create_network(
    State(services): State<Services>,
    uri: OriginalUri,
    caller: Caller,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::POST, &uri, raw.clone())
        .await?;
    let spec: NewNetworkSpec = body(&raw)?;
    let n = account::add_network(&services, &auth.user, &spec).await?;
    Ok((StatusCode::CREATED, Json(settings(&services, &n).await?)).into_response())
}

/// One of your networks' settings.
#[utoipa::path(get, path = "/api/networks/{name}", params(("name" = String, Path, description = "The network's name.")), responses(
    (status = 200, description = "Its settings (live state: `GET /api/networks`).", body = NetworkSettings),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 404, description = "You have no network of this name.", body = ErrorJson),
))]
pub async fn get_network(
    State(services): State<Services>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<Json<NetworkSettings>, ApiError> {
    let n = services
        .store
        .network_by_name(auth.user.id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("you have no network {name:?}")))?;
    Ok(Json(settings(&services, &n).await?))
}

/// Change a network: any field; `enabled` connects or disconnects it.
///
/// A change of anything but the nick reconnects the network with the new settings; a
/// nick alone is asked of the server. `"sasl": null` removes SASL.
#[utoipa::path(patch, path = "/api/networks/{name}", params(("name" = String, Path, description = "The network's name.")), request_body = NetworkChange, responses(
    (status = 200, description = "Changed.", body = NetworkSettings),
    (status = 400, description = "A field is invalid; the message names it.", body = ErrorJson),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 403, description = "`server_not_allowed` (a new address), `forbidden_origin`.", body = ErrorJson),
    (status = 404, description = "You have no network of this name.", body = ErrorJson),
    (status = 503, description = "`owner_unreachable`.", body = ErrorJson),
))]
pub async fn update_network(
    State(services): State<Services>,
    uri: OriginalUri,
    caller: Caller,
    Path(name): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::PATCH, &uri, raw.clone())
        .await?;
    let change: NetworkChange = body(&raw)?;
    let n = account::update_network(&services, &auth.user, &name, &change).await?;
    Ok(Json(settings(&services, &n).await?).into_response())
}

/// Remove a network: it disconnects (QUIT) and its backlog is deleted.
#[utoipa::path(delete, path = "/api/networks/{name}", params(("name" = String, Path, description = "The network's name.")), responses(
    (status = 204, description = "Removed."),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 403, description = "`forbidden_origin`.", body = ErrorJson),
    (status = 404, description = "You have no network of this name.", body = ErrorJson),
    (status = 503, description = "`owner_unreachable`.", body = ErrorJson),
))]
pub async fn delete_network(
    State(services): State<Services>,
    uri: OriginalUri,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::DELETE, &uri, Bytes::new())
        .await?;
    account::remove_network(&services, &auth.user, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// `#channel`.
    name: String,
    #[serde(default)]
    key: Option<String>,
}

/// What a join or part did.
#[derive(Serialize, ToSchema)]
pub struct ChannelResult {
    /// `sent`: asked of the connected server (the session keeps the channel once the
    /// server confirms); `saved`: the network is not connected, the list is saved
    /// for its next connection.
    result: ChannelChange,
}

/// Join a channel and keep it (rejoined after reconnects and restarts).
#[utoipa::path(post, path = "/api/networks/{name}/channels", params(("name" = String, Path, description = "The network's name.")), request_body = JoinRequest, responses(
    (status = 202, description = "Sent to the server, or saved for the next connection.", body = ChannelResult),
    (status = 400, description = "Not a channel name, or a bad key.", body = ErrorJson),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 404, description = "You have no network of this name.", body = ErrorJson),
    (status = 503, description = "`owner_unreachable`.", body = ErrorJson),
))]
pub async fn join_channel(
    State(services): State<Services>,
    uri: OriginalUri,
    caller: Caller,
    Path(name): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::POST, &uri, raw.clone())
        .await?;
    let req: JoinRequest = body(&raw)?;
    let result =
        account::join_channel(&services, &auth.user, &name, &req.name, req.key.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(ChannelResult { result })).into_response())
}

/// Leave a channel and forget it (`{channel}` URL-encoded: `%23ferry`).
#[utoipa::path(delete, path = "/api/networks/{name}/channels/{channel}", params(
    ("name" = String, Path, description = "The network's name."),
    ("channel" = String, Path, description = "The channel, URL-encoded (`%23ferry`).")), responses(
    (status = 202, description = "Sent to the server, or saved for the next connection.", body = ChannelResult),
    (status = 400, description = "Not a channel name.", body = ErrorJson),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 404, description = "No such network, or (disconnected) not in that channel.", body = ErrorJson),
    (status = 503, description = "`owner_unreachable`.", body = ErrorJson),
))]
pub async fn part_channel(
    State(services): State<Services>,
    uri: OriginalUri,
    caller: Caller,
    Path((name, channel)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::DELETE, &uri, Bytes::new())
        .await?;
    let result = account::part_channel(&services, &auth.user, &name, &channel).await?;
    Ok((StatusCode::ACCEPTED, Json(ChannelResult { result })).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current: String,
    new: String,
}

/// Change your password: every other session ends and their websockets close.
///
/// The current password is checked through the login guard; the new one must have at
/// least `[auth] min_password_len` characters (8 by default). The session that asked
/// stays logged in.
#[utoipa::path(post, path = "/api/me/password", request_body = PasswordChange, responses(
    (status = 204, description = "Changed."),
    (status = 400, description = "The new password is too short.", body = ErrorJson),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 403, description = "`invalid_credentials`: the current password is wrong; `forbidden_origin`.", body = ErrorJson),
    (status = 429, description = "Too many failed attempts; see Retry-After.", body = ErrorJson),
    (status = 503, description = "The hashing pool is full (see Retry-After), or `owner_unreachable`.", body = ErrorJson),
))]
pub async fn change_password(
    State(services): State<Services>,
    ClientIp(client_ip): ClientIp,
    uri: OriginalUri,
    caller: Caller,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::POST, &uri, raw.clone())
        .await?;
    let req: PasswordChange = body(&raw)?;
    let keep = session::token_hash(&auth.token);
    account::change_password(
        &services,
        &auth.user,
        client_ip,
        &req.current,
        &req.new,
        Some(&keep),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Your auto-away settings.
#[utoipa::path(get, path = "/api/me/away", responses(
    (status = 200, description = "The settings.", body = AwayView),
    (status = 401, description = "No valid session.", body = ErrorJson),
))]
pub async fn away_settings(
    State(services): State<Services>,
    auth: AuthUser,
) -> Result<Response, Refusal> {
    let view = account::away_settings(&services, &auth.user).await?;
    Ok(Json(view).into_response())
}

/// Change your auto-away settings: `auto_away` on or off, your own `away_message`
/// (`null` or empty: the server's default). A session that is away now follows at once.
#[utoipa::path(patch, path = "/api/me/away", request_body = AwayChange, responses(
    (status = 200, description = "Changed.", body = AwayView),
    (status = 400, description = "A field is invalid; the message names it.", body = ErrorJson),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 403, description = "`forbidden_origin`.", body = ErrorJson),
    (status = 503, description = "`owner_unreachable`.", body = ErrorJson),
))]
pub async fn update_away(
    State(services): State<Services>,
    uri: OriginalUri,
    caller: Caller,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::PATCH, &uri, raw.clone())
        .await?;
    let change: AwayChange = body(&raw)?;
    let view = account::update_away(&services, &auth.user, &change).await?;
    Ok(Json(view).into_response())
}

/// Change one of your channels (`{channel}` URL-encoded: `%23ferry`): detach it (you
/// stay in it and it is logged, but your clients do not get its lines until it is
/// attached again) or attach it, and what attaches it by itself.
#[utoipa::path(patch, path = "/api/networks/{name}/channels/{channel}", params(
    ("name" = String, Path, description = "The network's name."),
    ("channel" = String, Path, description = "The channel, URL-encoded (`%23ferry`).")),
    request_body = ChannelUpdate, responses(
    (status = 204, description = "Changed."),
    (status = 400, description = "Not a channel name, or a bad field.", body = ErrorJson),
    (status = 401, description = "No valid session.", body = ErrorJson),
    (status = 404, description = "No such network, or not in that channel.", body = ErrorJson),
    (status = 503, description = "`owner_unreachable`.", body = ErrorJson),
))]
pub async fn update_channel(
    State(services): State<Services>,
    uri: OriginalUri,
    caller: Caller,
    Path((name, channel)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let auth = caller
        .act(&services, Method::PATCH, &uri, raw.clone())
        .await?;
    let change: ChannelUpdate = body(&raw)?;
    account::update_channel(&services, &auth.user, &name, &channel, &change).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
