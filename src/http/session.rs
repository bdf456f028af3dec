//! Who is asking: login sessions as a bearer token or the `ferry_session` cookie.
//!
//! A token is 32 random bytes, hex-encoded; the store keeps only its SHA-256, so a
//! copy of the database hands out no live session. Sessions live in the store, so they
//! survive restarts and work on whichever node later serves the user.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::services::Services;
use crate::store::User;

/// Name of the session cookie.
pub const COOKIE: &str = "ferry_session";

/// How long a session lives without being used (sliding).
pub const SESSION_TTL: Duration = Duration::days(30);

/// A fresh random session token.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The `Set-Cookie` value that installs a session in a browser. Not `Secure`: Ferry
/// may be served over plain HTTP on a loopback address; a TLS-terminating proxy can
/// add it.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.num_seconds()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// The token a request carries: `Authorization: Bearer …` first, else the cookie.
pub fn request_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_owned());
    }
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The user of a valid session, or `None`.
///
/// # Errors
/// Only store failures; a bad token is `Ok(None)`.
pub async fn session_user(services: &Services, token: &str) -> Result<Option<User>, ApiError> {
    let hash = token_hash(token);
    let Some(id) = services
        .store
        .use_session(&hash, Utc::now(), SESSION_TTL)
        .await?
    else {
        return Ok(None);
    };
    Ok(services.store.user(id).await?)
}

/// An authenticated request: the session's user and its token. Extracting it answers
/// 401 when the request carries no valid session.
pub struct AuthUser {
    pub user: User,
    pub token: String,
}

impl FromRequestParts<Services> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        services: &Services,
    ) -> Result<AuthUser, ApiError> {
        let token = request_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let user = session_user(services, &token)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        // Routing: a user another node owns is served there (logging out works anywhere).
        if services.users.get(user.id).is_none() && !parts.uri.path().ends_with("/logout") {
            let owner = services
                .owner_of(user.id)
                .await
                .map_err(ApiError::internal)?;
            if !owner.local && owner.node_id.is_some() {
                return Err(ApiError::moved(&owner));
            }
        }
        Ok(AuthUser { user, token })
    }
}
