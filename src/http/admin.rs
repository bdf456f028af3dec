//! The admin API: what `ferry user …` and `ferry network …` call on a running
//! node. Authenticated by the node's admin token (published in the store,
//! so whoever can read the store can administer the node) or by the session of
//! a user with the admin flag (403 for other users).
//!
//! **A change reaches the node that runs the user, wherever it is made.** Every
//! per-user call (network add/remove, user remove, retention, a network list with
//! live state) asks the store who owns the user: when it is another live node, this
//! node passes the call on to that node's admin API (its URL and token are in the
//! node list) and answers with its answer, so the owner changes its store rows and
//! its running actor together, exactly as if it had been asked. When the owner does
//! not answer, nothing is changed and the caller gets the reason (503
//! `owner_unreachable`). A user nobody runs (no owner, or its owner is dead) is
//! changed in the store only: whoever adopts it loads it from there. A passed-on call
//! carries `x-ferry-forwarded` and is never passed on again.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::input::{plain, ApiJson};
use super::openapi::ErrorJson;
use super::session;
use super::ApiError;
use crate::admin::{self, AdminError, NetworkSpec};
use crate::limits::{LimitsSpec, LimitsView};
use crate::migrate::{AdminClient, CallError, Signals, FORWARDED};
use crate::services::Services;
use crate::store::{Network, NodeRecord, UserId};
use crate::user::NetworkStatus;

/// How long a call passed on to the owner node may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin routes under `/api/admin`: those with `routes!` are in `openapi.json`;
/// `/running`, `/health` and `/peer` are node-to-node and `/upgrade` is `ferry
/// upgrade`'s: left out of it.
pub fn router() -> OpenApiRouter<Services> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .route("/running", get(running))
        .routes(routes!(delete_user, update_user))
        .routes(routes!(list_networks, create_network))
        .routes(routes!(delete_network))
        .routes(routes!(list_limits))
        .routes(routes!(set_limits, delete_limits))
        .routes(routes!(super::invites::create_invite))
        .route("/health", get(health))
        .route("/peer", get(peer))
        .route("/upgrade", axum::routing::post(super::upgrade::upgrade))
}

/// What a peer asks while the store is away (`cluster::peer`): how long since this
/// node reached the store, and whether it fenced. Only the node's admin token opens
/// it: checking a user's session would need the store, which may be gone.
async fn peer(
    State(services): State<Services>,
    headers: HeaderMap,
) -> Result<Json<crate::cluster::peer::PeerStatus>, ApiError> {
    let token = session::request_token(&headers).ok_or_else(ApiError::unauthorized)?;
    if !services.node.admin_token.matches(&token) {
        return Err(ApiError::unauthorized());
    }
    let users = services.users.count() as u64;
    Ok(Json(crate::cluster::peer::PeerStatus {
        node: services.node.id.to_string(),
        store_age_ms: services
            .store_contact
            .age()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        fenced: !services.lease.is_valid() && users == 0,
        users,
    }))
}

/// The node's own figures that the migration driver watches (read from the metrics
/// it keeps: nothing is asked of the user actors).
async fn health(
    State(services): State<Services>,
    headers: HeaderMap,
) -> Result<Json<Signals>, ApiError> {
    authorize(&services, &headers).await?;
    let up = &services.users.config().upstream_stats;
    let w = services.writer.stats();
    Ok(Json(Signals {
        rejections: up.throttled.get() + up.too_many_connections.get(),
        write_errors: w.errors,
        mem_available: crate::cluster::mem_available(),
        loop_lag_ms: services.lag.get(),
        users: services.users.config().counters.users_running.get().max(0) as u64,
        write_queue: services.writer.queued() as u64,
        rss_bytes: crate::cluster::rss_bytes(),
    }))
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::Invalid(msg) => ApiError::bad_request(msg),
            AdminError::Store(e) => e.into(),
            AdminError::Busy(msg) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
            }
        }
    }
}

/// An authorized admin request: extracting it runs [`authorize`] before anything
/// else of the request is looked at (its body included), so an unauthorized request
/// gets the API's JSON `401`/`403`, never a hint about the expected body.
pub(super) struct Admin;

impl FromRequestParts<Services> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, services: &Services) -> Result<Admin, ApiError> {
        authorize(services, &parts.headers).await.map(|()| Admin)
    }
}

/// Lets in the node's admin token (the CLI) or the session of an admin user
/// (bearer or cookie); a session of a normal user gets 403.
pub(super) async fn authorize(services: &Services, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(given) = session::request_token(headers) else {
        return Err(ApiError::unauthorized());
    };
    // Compared in constant time: the token is a secret.
    let is_node_token = services.node.admin_token.matches(&given);
    if is_node_token {
        return Ok(());
    }
    match session::session_user(services, &given).await? {
        Some(u) if u.is_admin => Ok(()),
        Some(_) => Err(ApiError::forbidden()),
        None => Err(ApiError::unauthorized()),
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub admin: bool,
    pub networks: usize,
    /// Whether its owner node runs it now, as that node says.
    pub running: bool,
    /// The node that owns it (the store's owner row), if any.
    pub node: Option<String>,
}

/// The users this node runs now (live actors), by id: what another node's
/// [`list_users`] asks each owner.
async fn running(
    State(services): State<Services>,
    _admin: Admin,
) -> Result<Json<Vec<UserId>>, ApiError> {
    let mut ids: Vec<UserId> = services
        .users
        .running()
        .iter()
        .filter(|r| !r.closed)
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    Ok(Json(ids))
}

/// Every user with its owner node and whether that node runs it: the owner is the
/// store's, and each other live owner node is asked which users it runs (this node
/// answers for itself), so the answer does not depend on which node was asked. A
/// node that does not answer runs nothing as far as this list goes.
/// Admin: list users.
///
/// Node admin token or an admin user's session.
#[utoipa::path(get, path = "/users", responses(
    (status = 200, description = "Users: name, admin, networks, running.", body = Vec<UserInfo>),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson),
))]
async fn list_users(
    State(services): State<Services>,
    _admin: Admin,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    let owners: BTreeMap<UserId, Option<String>> = services
        .store
        .ownerships()
        .await?
        .into_iter()
        .map(|o| (o.user_id, o.node_id))
        .collect();
    let nodes = services.store.nodes().await?;
    let mut running: HashSet<UserId> = HashSet::new();
    let owner_nodes: HashSet<&str> = owners.values().flatten().map(String::as_str).collect();
    for n in nodes.iter().filter(|n| owner_nodes.contains(n.id.as_str())) {
        if n.id == *services.node.id {
            running.extend(
                services
                    .users
                    .running()
                    .iter()
                    .filter(|r| !r.closed)
                    .map(|r| r.id),
            );
            continue;
        }
        if !services.store.node_is_live(&n.id).await? {
            continue;
        }
        match forward::<Vec<UserId>>(&services, n, reqwest::Method::GET, "/running", None::<&()>)
            .await
        {
            Ok(ids) => running.extend(ids.unwrap_or_default()),
            Err(e) => tracing::warn!(node = %n.id, error = %e, "asking a node which users it runs"),
        }
    }
    let mut out = Vec::new();
    for u in services.store.list_users().await? {
        out.push(UserInfo {
            networks: services.store.networks(u.id).await?.len(),
            running: running.contains(&u.id),
            node: owners.get(&u.id).cloned().flatten(),
            name: u.name,
            admin: u.is_admin,
        });
    }
    Ok(Json(out))
}

/// The live node other than this one that runs `user`, to which a change to it is
/// passed on; `None`: act here (this node owns it, nobody runs it, or the call was
/// already passed on once).
async fn owner_elsewhere(
    services: &Services,
    headers: &HeaderMap,
    user: UserId,
) -> Result<Option<NodeRecord>, ApiError> {
    if headers.contains_key(FORWARDED) {
        return Ok(None);
    }
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

/// Calls `node`'s admin API as a passed-on call.
async fn forward<T: DeserializeOwned>(
    services: &Services,
    node: &NodeRecord,
    method: reqwest::Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<Option<T>, CallError> {
    let client = AdminClient::new(node, services.store.secret_key(), FORWARD_TIMEOUT)
        .map_err(CallError::Answer)?
        .forwarded();
    client.call(method, path, body).await
}

/// Passes a change on to the node that runs the user and answers with its answer:
/// its error as its own, or 503 `owner_unreachable` (nothing changed) when it does
/// not answer.
async fn pass_on<T: DeserializeOwned>(
    services: &Services,
    node: &NodeRecord,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<Option<T>, ApiError> {
    forward(services, node, method, path, body)
        .await
        .map_err(|e| match e {
            CallError::Refused {
                status, message, ..
            } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                "owner_refused",
                message,
            ),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "owner_unreachable",
                format!(
                    "user {user:?} runs on node {:?} ({}), which did not answer ({other}); \
                 nothing was changed: try again, or once that node's users were adopted",
                    node.id, node.admin_url
                ),
            ),
        })
}

#[derive(Deserialize, ToSchema)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

/// Admin: create a user and start it.
#[utoipa::path(post, path = "/users", request_body = NewUser, responses(
    (status = 201, description = "Created.", body = UserInfo),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson),
    (status = 409, description = "Exists.", body = ErrorJson),
))]
async fn create_user(
    State(services): State<Services>,
    _admin: Admin,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    let user = admin::create_user(
        &services.store,
        &services.guard,
        &req.name,
        &req.password,
        req.admin,
    )
    .await?;
    // Placement: the active node with the most headroom runs the new user.
    services
        .place_user(user.id, &user.name)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(UserInfo {
            name: user.name,
            admin: user.is_admin,
            networks: 0,
            running: true,
            node: services.store.owner(user.id).await?.and_then(|o| o.node_id),
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
struct UserUpdate {
    /// Days of backlog to keep; `null` keeps everything.
    retention_days: Option<i64>,
    /// Newest messages to keep; `null` keeps everything.
    retention_messages: Option<i64>,
}

/// Admin: set a user's backlog retention (null = unlimited).
#[utoipa::path(patch, path = "/users/{name}", params(("name" = String, Path, description = "The user's name.")), request_body = UserUpdate, responses(
    (status = 204, description = "Updated."),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
async fn update_user(
    State(services): State<Services>,
    _admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UserUpdate>,
) -> Result<StatusCode, ApiError> {
    plain("user name", &name)?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    let retention = admin::retention(req.retention_days, req.retention_messages)?;
    if let Some(node) = owner_elsewhere(&services, &headers, user.id).await? {
        let body = serde_json::json!({
            "retention_days": req.retention_days,
            "retention_messages": req.retention_messages,
        });
        pass_on::<serde_json::Value>(
            &services,
            &node,
            &name,
            reqwest::Method::PATCH,
            &format!("/users/{name}"),
            Some(&body),
        )
        .await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    services.store.set_retention(user.id, retention).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Admin: delete a user.
#[utoipa::path(delete, path = "/users/{name}", params(("name" = String, Path, description = "The user's name.")), responses(
    (status = 204, description = "Deleted."),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
async fn delete_user(
    State(services): State<Services>,
    _admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    plain("user name", &name)?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    if let Some(node) = owner_elsewhere(&services, &headers, user.id).await? {
        pass_on::<serde_json::Value>(
            &services,
            &node,
            &name,
            reqwest::Method::DELETE,
            &format!("/users/{name}"),
            None::<&()>,
        )
        .await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    services.users.stop(user.id, None).await;
    services.store.delete_user(user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A network with its live state when its user runs here.
#[derive(Serialize)]
pub struct NetworkInfo {
    #[serde(flatten)]
    pub network: Network,
    pub live: Option<NetworkStatus>,
}

/// Admin: a user's networks with live state.
#[utoipa::path(get, path = "/users/{name}/networks", params(("name" = String, Path, description = "The user's name.")), responses(
    (status = 200, description = "Networks: the stored fields and `live` (state, nick, channels, clients) when the user runs here."),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
async fn list_networks(
    State(services): State<Services>,
    _admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    plain("user name", &name)?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    if let Some(node) = owner_elsewhere(&services, &headers, user.id).await? {
        // The live state is the owner's to tell.
        let path = format!("/users/{name}/networks");
        let rows = pass_on::<serde_json::Value>(
            &services,
            &node,
            &name,
            reqwest::Method::GET,
            &path,
            None::<&()>,
        )
        .await?
        .unwrap_or_default();
        return Ok(Json(rows));
    }
    let live = match services.users.get(user.id) {
        Some(h) => h.status().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let out = services
        .store
        .networks(user.id)
        .await?
        .into_iter()
        .map(|n| NetworkInfo {
            live: live.iter().find(|s| s.network_id == n.id).cloned(),
            network: n,
        })
        .collect::<Vec<_>>();
    Ok(Json(serde_json::to_value(out).map_err(ApiError::internal)?))
}

/// Admin: add a network to a user (it connects at once).
#[utoipa::path(post, path = "/users/{name}/networks", params(("name" = String, Path, description = "The user's name.")), request_body = NetworkSpec, responses(
    (status = 201, description = "Created."),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
    (status = 409, description = "Exists.", body = ErrorJson),
))]
async fn create_network(
    State(services): State<Services>,
    _admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<NetworkSpec>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    plain("user name", &name)?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    let new = spec.to_new_network()?;
    if let Some(node) = owner_elsewhere(&services, &headers, user.id).await? {
        let path = format!("/users/{name}/networks");
        let network = pass_on::<serde_json::Value>(
            &services,
            &node,
            &name,
            reqwest::Method::POST,
            &path,
            Some(&spec),
        )
        .await?
        .ok_or_else(|| ApiError::internal("the owner node sent no network back"))?;
        return Ok((StatusCode::CREATED, Json(network)));
    }
    let network = services.store.create_network(user.id, &new).await?;
    if let Some(h) = services.users.get(user.id) {
        h.add_network(network.clone())
            .await?
            .map_err(ApiError::internal)?;
        // The node's session count follows (the heartbeat publishes it).
        services
            .users
            .refresh_sessions(user.id)
            .await
            .map_err(ApiError::internal)?;
    }
    // The user's IRC clients (`soju.im/bouncer-networks-notify`) learn of it, as of
    // the user's own changes.
    crate::account::announce(&services, &user, &network).await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(network).map_err(ApiError::internal)?),
    ))
}

/// Admin: delete a network.
#[utoipa::path(delete, path = "/users/{name}/networks/{network}", params(("name" = String, Path, description = "The user's name."),
    ("network" = String, Path, description = "The network's name.")), responses(
    (status = 204, description = "Deleted."),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
async fn delete_network(
    State(services): State<Services>,
    _admin: Admin,
    headers: HeaderMap,
    Path((name, network)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    plain("user name", &name)?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    plain("network name", &network)?;
    let net = services
        .store
        .network_by_name(user.id, &network)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {name:?} has no network {network:?}")))?;
    if let Some(node) = owner_elsewhere(&services, &headers, user.id).await? {
        let path = format!("/users/{name}/networks/{network}");
        pass_on::<serde_json::Value>(
            &services,
            &node,
            &name,
            reqwest::Method::DELETE,
            &path,
            None::<&()>,
        )
        .await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    if let Some(h) = services.users.get(user.id) {
        h.remove_network(net.id).await?;
    }
    services.store.delete_network(net.id).await?;
    services
        .users
        .refresh_sessions(user.id)
        .await
        .map_err(ApiError::internal)?;
    services
        .users
        .config()
        .watchers
        .send(user.id, crate::user::Notice::removed(net.id));
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(e: AdminError) -> ApiError {
    match e {
        AdminError::Invalid(msg) => ApiError::not_found(msg),
        other => other.into(),
    }
}

/// Admin: the configured per-network limits.
#[utoipa::path(get, path = "/limits", responses(
    (status = 200, description = "Limits by key.", body = Vec<LimitsView>),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson),
))]
async fn list_limits(
    State(services): State<Services>,
    _admin: Admin,
) -> Result<Json<Vec<LimitsView>>, ApiError> {
    let rows = services.store.network_limits().await?;
    Ok(Json(rows.iter().map(LimitsView::from).collect()))
}

/// `?force=true`: set limits even for a key no network falls under yet.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Force {
    #[serde(default)]
    force: bool,
}

/// Admin: set a network's limits (create or replace).
///
/// This node applies them at once, the other nodes within their limits interval (5 s
/// by default); no restart. A key no network falls under (host, parent domain or
/// network name) is refused unless `force=true`.
#[utoipa::path(put, path = "/limits/{key}", params(("key" = String, Path, description = "A host, a parent domain of hosts, or a network name (lowercase); see ARCHITECTURE.md, Limiter."), Force), request_body = LimitsSpec, responses(
    (status = 200, description = "The stored limits.", body = LimitsView),
    (status = 400, description = "A value is invalid (the message names it), or no network falls under the key.", body = ErrorJson),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson),
))]
async fn set_limits(
    State(services): State<Services>,
    _admin: Admin,
    Path(key): Path<String>,
    Query(force): Query<Force>,
    ApiJson(spec): ApiJson<LimitsSpec>,
) -> Result<Json<LimitsView>, ApiError> {
    plain("key", &key)?;
    let limits = spec
        .to_limits(&key, chrono::Utc::now())
        .map_err(ApiError::bad_request)?;
    if !force.force && !admin::limits_key_in_use(&services.store, &limits.key).await? {
        return Err(ApiError::bad_request(admin::unused_limits_key(&limits.key)));
    }
    services.store.set_network_limits(&limits).await?;
    services.reload_limits().await.map_err(ApiError::internal)?;
    tracing::info!(key = %limits.key, sessions_per_ip = limits.sessions_per_ip,
        connects_per_minute = limits.connects_per_minute, burst = limits.burst, "network limits set");
    Ok(Json(LimitsView::from(&limits)))
}

/// Admin: remove a network's limits (back to the defaults).
#[utoipa::path(delete, path = "/limits/{key}", params(("key" = String, Path, description = "A host, a parent domain of hosts, or a network name (lowercase); see ARCHITECTURE.md, Limiter.")), responses(
    (status = 204, description = "Removed."),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 403, description = "The session's user is not an admin.", body = ErrorJson),
    (status = 404, description = "No limits under this key.", body = ErrorJson),
))]
async fn delete_limits(
    State(services): State<Services>,
    _admin: Admin,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    plain("key", &key)?;
    if !services.store.delete_network_limits(&key).await? {
        return Err(ApiError::not_found(format!("no limits for {key:?}")));
    }
    services.reload_limits().await.map_err(ApiError::internal)?;
    tracing::info!(key = %key, "network limits removed");
    Ok(StatusCode::NO_CONTENT)
}
