//! The one HTTP error type: a stable code and a human message as JSON. The
//! internal cause is logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::error;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable (`not_found`, `conflict`, …).
    pub code: &'static str,
    pub message: String,
    /// Extra fields of the error object (e.g. where a moved user's owner is).
    pub detail: Option<serde_json::Map<String, serde_json::Value>>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// What a request that needs the store hears while the store is away.
pub const STORE_AWAY: &str = "the store is unreachable, try again shortly";

/// The `Retry-After` of [`ApiError::store_away`], in seconds.
pub const STORE_AWAY_RETRY_SECS: u64 = 5;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            retry_after: None,
        }
    }

    /// 503, code `store_unreachable`, with `Retry-After`: the store does not answer
    /// (the node rides out an outage, or a query failed to reach it). Attached
    /// clients keep working; what needs the store is asked to come back shortly.
    pub fn store_away() -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unreachable",
            STORE_AWAY,
        );
        e.retry_after = Some(STORE_AWAY_RETRY_SECS);
        e
    }

    /// 421 Misdirected Request, code `moved`: the user runs on another node; `owner`
    /// carries its node id, `http` URL and `irc` address. Clients retry there.
    pub fn moved(owner: &crate::cluster::Owner) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "moved",
            format!(
                "this user is served by node {}; send the request to {}",
                owner.node_id.as_deref().unwrap_or("?"),
                owner.http_url.as_deref().unwrap_or("?")
            ),
        );
        let mut d = serde_json::Map::new();
        d.insert(
            "owner".into(),
            json!({
                "node": owner.node_id, "http": owner.http_url, "irc": owner.irc_addr,
            }),
        );
        e.detail = Some(d);
        e
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", what)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials",
        )
    }

    pub fn forbidden() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs an admin account",
        )
    }

    /// A cookie-authenticated request from a page of another origin.
    pub fn forbidden_origin() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "a session cookie is only accepted from this server's own pages",
        )
    }

    /// An internal failure: logged here with its cause, reported vaguely.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        error!(error = %cause, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(what) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Unavailable => ApiError::store_away(),
            StoreError::Db(e) if unreachable(&e) => {
                tracing::warn!(error = %e, "request failed: the store is unreachable");
                ApiError::store_away()
            }
            other => ApiError::internal(other),
        }
    }
}

/// Whether a database error means the database could not be reached (as opposed to
/// a query it refused).
fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

impl From<crate::user::UserError> for ApiError {
    fn from(e: crate::user::UserError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = serde_json::Map::new();
        err.insert("code".into(), json!(self.code));
        err.insert("message".into(), json!(self.message));
        err.extend(self.detail.unwrap_or_default());
        let mut resp = (self.status, Json(json!({ "error": err }))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}
