//! `POST /api/login` and `POST /api/logout`.
//!
//! Login attempts are rate limited per user name and per client address before any
//! password is checked. A failed login looks the same whether the user exists or not:
//! same status, same body, and an argon2 verification against a dummy hash when there
//! is no such user, so timing does not tell either.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::session::{self, AuthUser};
use super::ApiError;
use crate::services::Services;
use crate::store::User;

/// Attempts per minute, and the burst allowed, per user name.
const PER_USER: (u32, u32) = (5, 10);
/// Attempts per minute, and the burst allowed, per client address (several people
/// may share one address).
const PER_ADDR: (u32, u32) = (20, 30);
/// Keys kept before the limiters forget idle ones.
const MAX_KEYS: usize = 10_000;

fn quota((per_minute, burst): (u32, u32)) -> Quota {
    let nz = |n: u32| NonZeroU32::new(n).expect("non-zero constant");
    Quota::per_minute(nz(per_minute)).allow_burst(nz(burst))
}

/// The login rate limiters of one HTTP server.
pub struct LoginLimiter {
    by_user: DefaultKeyedRateLimiter<String>,
    by_addr: DefaultKeyedRateLimiter<IpAddr>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            by_user: RateLimiter::keyed(quota(PER_USER)),
            by_addr: RateLimiter::keyed(quota(PER_ADDR)),
        }
    }
}

impl LoginLimiter {
    /// Takes one attempt from both budgets; `Err(wait)` when either is spent.
    fn check(&self, user: &str, addr: IpAddr) -> Result<(), Duration> {
        if self.by_user.len() > MAX_KEYS {
            self.by_user.retain_recent();
        }
        if self.by_addr.len() > MAX_KEYS {
            self.by_addr.retain_recent();
        }
        let now = DefaultClock::default().now();
        let user: String = user.chars().take(64).collect();
        self.by_addr
            .check_key(&addr)
            .map_err(|n| n.wait_time_from(now))?;
        self.by_user
            .check_key(&user)
            .map_err(|n| n.wait_time_from(now))?;
        Ok(())
    }
}

#[derive(Deserialize)]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// A user as the API shows it.
#[derive(Serialize)]
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

#[derive(Serialize)]
struct LoginResponse {
    token: String,
    user: UserJson,
}

/// A hash to verify against when the user does not exist, so that an unknown user
/// costs the same time as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| crate::auth::hash_password("ferry-dummy-password"))
}

fn bad_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid username or password",
    )
}

pub async fn login(
    State(services): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(limiter): Extension<Arc<LoginLimiter>>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body
        .map_err(|e| ApiError::bad_request(format!("invalid login request: {}", e.body_text())))?;
    if let Err(wait) = limiter.check(&req.username, peer.ip()) {
        warn!(user = %req.username, addr = %peer.ip(), "login rate limited");
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many login attempts; retry in {secs} s"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Ok(resp);
    }

    let user = services.store.user_by_name(&req.username).await?;
    let hash = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    let password = req.password;
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&hash, &password))
        .await
        .map_err(ApiError::internal)?;
    let user = match user {
        Some(u) if ok => u,
        _ => {
            info!(user = %req.username, addr = %peer.ip(), "login failed");
            return Err(bad_credentials());
        }
    };

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
    info!(user = %user.name, addr = %peer.ip(), "login");
    let body = LoginResponse {
        user: UserJson::from(&user),
        token: token.clone(),
    };
    Ok((
        [(header::SET_COOKIE, session::set_cookie(&token))],
        Json(body),
    )
        .into_response())
}

pub async fn logout(
    State(services): State<Services>,
    auth: AuthUser,
) -> Result<Response, ApiError> {
    services
        .store
        .delete_session(&session::token_hash(&auth.token))
        .await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session::clear_cookie())],
    )
        .into_response())
}
