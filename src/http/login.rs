//! `POST /api/login`, `POST /api/logout` and `POST /api/password`.
//!
//! Every password check goes through the node's login guard (`auth::LoginGuard`):
//! budgets per client address and per account that count failures (so nobody can lock
//! the owner out), and the bounded hashing pool. A failed login looks the same whether
//! the user exists or not: same status, same body, and an argon2 verification against
//! a dummy hash when there is no such user, so timing does not tell either.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;

use super::openapi::ErrorJson;
use super::session::{self, AuthUser};
use super::ApiError;
use crate::auth::{Door, Refused};
use crate::services::Services;
use crate::store::User;

/// The answer to a refused attempt: 429 (throttled) or 503 (hashing pool full), with
/// `Retry-After`.
fn refused(r: Refused) -> Response {
    let (status, code) = match r {
        Refused::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        Refused::Busy => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let secs = r.retry_after_secs();
    let mut resp = ApiError::new(status, code, r.to_string()).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Checks `password` for `name` from `peer` through the guard: `Ok(Some(user))` when
/// it is right, `Ok(None)` when not (or no such user).
async fn check(
    services: &Services,
    door: Door,
    peer: SocketAddr,
    name: &str,
    password: &str,
) -> Result<Result<Option<User>, Response>, ApiError> {
    if services.lease.riding_out() {
        // The store is away: no password can be checked, and no session stored.
        return Err(ApiError::store_away());
    }
    let attempt = match services.guard.admit(door, peer.ip(), name) {
        Ok(a) => a,
        Err(r) => return Ok(Err(refused(r))),
    };
    let user = services.store.user_by_name(name).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    match attempt.verify(hash, password).await {
        Ok(true) => Ok(Ok(user)),
        Ok(false) => Ok(Ok(None)),
        Err(r) => Ok(Err(refused(r))),
    }
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// A user as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct UserJson {
    pub id: i64,
    pub name: String,
    pub admin: bool,
}

impl From<&User> for UserJson {
    fn from(u: &User) -> UserJson {
        UserJson {
            id: u.id,
            name: u.name.clone(),
            admin: u.is_admin,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Login)]
pub(super) struct LoginResponse {
    token: String,
    user: UserJson,
}

fn bad_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid username or password",
    )
}

/// Log in: sets the session cookie and returns a bearer token.
#[utoipa::path(post, path = "/api/login", security(()), request_body = LoginRequest, responses(
    (status = 200, description = "Logged in (Set-Cookie: ferry_session, HttpOnly, SameSite=Strict).", body = LoginResponse),
    (status = 401, description = "Wrong user name or password (indistinguishable).", body = ErrorJson),
    (status = 429, description = "Too many failed logins from this address (or on this account, from an address with failures of its own); see Retry-After.", body = ErrorJson),
    (status = 503, description = "The password hashing pool is full, or the store is unreachable (code `store_unreachable`); see Retry-After.", body = ErrorJson),
))]
pub async fn login(
    State(services): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body
        .map_err(|e| ApiError::bad_request(format!("invalid login request: {}", e.body_text())))?;
    super::input::plain("username", &req.username)?;
    let user = match check(&services, Door::Http, peer, &req.username, &req.password).await? {
        Ok(Some(u)) => u,
        Ok(None) => return Err(bad_credentials()),
        Err(resp) => return Ok(resp),
    };
    start_session(&services, &user, peer).await
}

/// Opens a login session for `user` (who just proved who they are, by password or
/// an invite): the session cookie and the bearer token, as `POST /api/login` answers.
///
/// # Errors
/// Store failures.
pub(super) async fn start_session(
    services: &Services,
    user: &User,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let token = session::new_token();
    let now = Utc::now();
    services
        .store
        .create_session(
            user.id,
            &session::token_hash(&token),
            now,
            session::SESSION_TTL,
        )
        .await?;
    if let Err(e) = services.store.delete_expired_sessions(now).await {
        warn!(error = %e, "could not delete expired sessions");
    }
    info!(user = ?user.name, addr = %peer.ip(), "login");
    let body = LoginResponse {
        user: UserJson::from(user),
        token: token.clone(),
    };
    Ok((
        [(header::SET_COOKIE, session::set_cookie(&token))],
        Json(body),
    )
        .into_response())
}

/// Revoke the current session and close its websockets (1008).
///
/// The session is deleted from the store and this session's websockets on this node
/// are closed.
#[utoipa::path(post, path = "/api/logout", responses(
    (status = 204, description = "Revoked; the cookie is cleared."),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson),
))]
pub async fn logout(
    State(services): State<Services>,
    auth: AuthUser,
) -> Result<Response, ApiError> {
    let hash = session::token_hash(&auth.token);
    services.store.delete_session(&hash).await?;
    services.sockets.end_session(auth.user.id, &hash);
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session::clear_cookie())],
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
pub struct PasswordChange {
    current: String,
    new: String,
}

/// Changes the user's password (the current one is checked through the login guard):
/// every other session of the user ends and all their websockets on this node close.
/// The session that asked stays logged in.
#[utoipa::path(post, path = "/api/password", request_body = PasswordChange, responses(
    (status = 204, description = "Changed."),
    (status = 400, description = "The new password is shorter than the minimum (`[auth] min_password_len`, default 8).", body = ErrorJson),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson),
    (status = 403, description = "The current password is wrong.", body = ErrorJson),
    (status = 429, description = "Too many failed logins; see Retry-After.", body = ErrorJson),
    (status = 503, description = "The password hashing pool is full; see Retry-After.", body = ErrorJson),
))]
pub async fn change_password(
    State(services): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    auth: AuthUser,
    body: Result<Json<PasswordChange>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!("invalid password change: {}", e.body_text()))
    })?;
    // The same operation as `POST /api/me/password` (`account::change_password`).
    let keep = session::token_hash(&auth.token);
    if let Err(e) = crate::account::change_password(
        &services,
        &auth.user,
        peer.ip(),
        &req.current,
        &req.new,
        Some(&keep),
    )
    .await
    {
        return Ok(super::account::Refusal::from(e).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
