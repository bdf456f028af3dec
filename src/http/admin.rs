//! The admin API: what `ferry user …` and `ferry network …` call on a running
//! node. Authenticated by the node's admin token (published in the store,
//! so whoever can read the store can administer the node) or by the session of
//! a user with the admin flag (403 for other users).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::session;
use super::ApiError;
use crate::admin::{self, AdminError, NetworkSpec};
use crate::limits::{LimitsSpec, LimitsView};
use crate::services::Services;
use crate::store::Network;
use crate::user::NetworkStatus;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{name}", delete(delete_user).patch(update_user))
        .route(
            "/users/{name}/networks",
            get(list_networks).post(create_network),
        )
        .route("/users/{name}/networks/{network}", delete(delete_network))
        .route("/limits", get(list_limits))
        .route("/limits/{key}", put(set_limits).delete(delete_limits))
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::Invalid(msg) => ApiError::bad_request(msg),
            AdminError::Store(e) => e.into(),
        }
    }
}

/// Lets in the node's admin token (the CLI) or the session of an admin user
/// (bearer or cookie); a session of a normal user gets 403.
pub(super) async fn authorize(services: &Services, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(given) = session::request_token(headers) else {
        return Err(ApiError::unauthorized());
    };
    // Constant-time comparison: the token is a secret.
    let is_node_token = given.len() == services.node.admin_token.len()
        && given
            .bytes()
            .zip(services.node.admin_token.bytes())
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if is_node_token {
        return Ok(());
    }
    match session::session_user(services, &given).await? {
        Some(u) if u.is_admin => Ok(()),
        Some(_) => Err(ApiError::forbidden()),
        None => Err(ApiError::unauthorized()),
    }
}

#[derive(Serialize)]
pub struct UserInfo {
    pub name: String,
    pub admin: bool,
    pub networks: usize,
    pub running: bool,
}

async fn list_users(
    State(services): State<Services>,
    headers: HeaderMap,
) -> Result<Json<Vec<UserInfo>>, ApiError> {
    authorize(&services, &headers).await?;
    let mut out = Vec::new();
    for u in services.store.list_users().await? {
        out.push(UserInfo {
            networks: services.store.networks(u.id).await?.len(),
            running: services.users.get(u.id).is_some(),
            name: u.name,
            admin: u.is_admin,
        });
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(
    State(services): State<Services>,
    headers: HeaderMap,
    Json(req): Json<NewUser>,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    authorize(&services, &headers).await?;
    let user = admin::create_user(&services.store, &req.name, &req.password, req.admin).await?;
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
        }),
    ))
}

#[derive(Deserialize)]
struct UserUpdate {
    /// Days of backlog to keep; `null` keeps everything.
    retention_days: Option<i64>,
    /// Newest messages to keep; `null` keeps everything.
    retention_messages: Option<i64>,
}

async fn update_user(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(req): Json<UserUpdate>,
) -> Result<StatusCode, ApiError> {
    authorize(&services, &headers).await?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    let retention = admin::retention(req.retention_days, req.retention_messages)?;
    services.store.set_retention(user.id, retention).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_user(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&services, &headers).await?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
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

async fn list_networks(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Vec<NetworkInfo>>, ApiError> {
    authorize(&services, &headers).await?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
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
        .collect();
    Ok(Json(out))
}

async fn create_network(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(spec): Json<NetworkSpec>,
) -> Result<(StatusCode, Json<Network>), ApiError> {
    authorize(&services, &headers).await?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    let new = spec.to_new_network()?;
    let network = services.store.create_network(user.id, &new).await?;
    if let Some(h) = services.users.get(user.id) {
        h.add_network(network.clone())
            .await?
            .map_err(ApiError::internal)?;
    }
    Ok((StatusCode::CREATED, Json(network)))
}

async fn delete_network(
    State(services): State<Services>,
    headers: HeaderMap,
    Path((name, network)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&services, &headers).await?;
    let user = admin::find_user(&services.store, &name)
        .await
        .map_err(not_found)?;
    let net = services
        .store
        .network_by_name(user.id, &network)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {name:?} has no network {network:?}")))?;
    if let Some(h) = services.users.get(user.id) {
        h.remove_network(net.id).await?;
    }
    services.store.delete_network(net.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(e: AdminError) -> ApiError {
    match e {
        AdminError::Invalid(msg) => ApiError::not_found(msg),
        other => other.into(),
    }
}

async fn list_limits(
    State(services): State<Services>,
    headers: HeaderMap,
) -> Result<Json<Vec<LimitsView>>, ApiError> {
    authorize(&services, &headers).await?;
    let rows = services.store.network_limits().await?;
    Ok(Json(rows.iter().map(LimitsView::from).collect()))
}

/// Creates or replaces a network's limits. This node applies them at once; the
/// others within their `limits_interval`.
async fn set_limits(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Json(spec): Json<LimitsSpec>,
) -> Result<Json<LimitsView>, ApiError> {
    authorize(&services, &headers).await?;
    let limits = spec
        .to_limits(&key, chrono::Utc::now())
        .map_err(ApiError::bad_request)?;
    services.store.set_network_limits(&limits).await?;
    services.reload_limits().await.map_err(ApiError::internal)?;
    tracing::info!(key = %limits.key, sessions_per_ip = limits.sessions_per_ip,
        connects_per_minute = limits.connects_per_minute, burst = limits.burst, "network limits set");
    Ok(Json(LimitsView::from(&limits)))
}

async fn delete_limits(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&services, &headers).await?;
    if !services.store.delete_network_limits(&key).await? {
        return Err(ApiError::not_found(format!("no limits for {key:?}")));
    }
    services.reload_limits().await.map_err(ApiError::internal)?;
    tracing::info!(key = %key, "network limits removed");
    Ok(StatusCode::NO_CONTENT)
}
