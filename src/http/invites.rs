//! Invite links over HTTP (`crate::invite`): `GET /api/invites/{token}` (is it
//! still good?) and `POST /api/invites/{token}` (sign up: create the account and log
//! in, as `POST /api/login` does) for the person who got the link, without a session;
//! `POST /api/admin/invites` for the operator (`ferry user invite`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::Admin;
use super::input::{plain, ApiJson};
use super::openapi::ErrorJson;
use super::ApiError;
use crate::invite::{self, InviteError};
use crate::services::Services;

impl From<InviteError> for ApiError {
    fn from(e: InviteError) -> ApiError {
        let status = match &e {
            InviteError::Disabled | InviteError::NotValid => StatusCode::NOT_FOUND,
            InviteError::Invalid(_) => StatusCode::BAD_REQUEST,
            InviteError::NameTaken(_) => StatusCode::CONFLICT,
            InviteError::Refused(crate::auth::Refused::Throttled { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            InviteError::Refused(crate::auth::Refused::Busy) => StatusCode::SERVICE_UNAVAILABLE,
            InviteError::Store(cause) => return ApiError::internal(cause),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// An [`InviteError`] as a response, with `Retry-After` when it is a refusal.
fn refusal(e: InviteError) -> Response {
    let retry = match &e {
        InviteError::Refused(r) => Some(r.retry_after_secs()),
        _ => None,
    };
    let mut resp = ApiError::from(e).into_response();
    if let Some(secs) = retry {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What a valid invite offers.
#[derive(Serialize, ToSchema)]
pub struct InviteJson {
    /// Whether the account it creates may use the admin API.
    admin: bool,
    /// Until when it can be used (RFC 3339, UTC).
    expires_at: String,
}

/// Whether an invite link can still be used (no session needed).
#[utoipa::path(get, path = "/api/invites/{token}", security(()),
    params(("token" = String, Path, description = "The token from the invite URL (`#invite=…`).")),
    responses(
        (status = 200, description = "Usable.", body = InviteJson),
        (status = 404, description = "`invite_invalid`: unknown, used or expired; `invites_disabled`: the server does not take invites (`[accounts] invites`).", body = ErrorJson),
        (status = 429, description = "Too many failed attempts from this address (counted like failed logins); see Retry-After.", body = ErrorJson),
    ))]
pub async fn get_invite(
    State(services): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
) -> Response {
    match invite::check(
        &services.store,
        &services.accounts,
        &services.guard,
        peer.ip(),
        &token,
    )
    .await
    {
        Ok(offer) => Json(InviteJson {
            admin: offer.admin,
            expires_at: rfc3339(offer.expires_at),
        })
        .into_response(),
        Err(e) => refusal(e),
    }
}

/// The account a person chooses with an invite.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    /// 1-64 letters, digits, `-`, `_` or `.` (as `ferry user add`).
    name: String,
    /// At least `[auth] min_password_len` characters (default 8).
    password: String,
}

/// Signs up with an invite: creates the account, uses up the invite and logs in (the
/// session cookie and token, as `POST /api/login`).
#[utoipa::path(post, path = "/api/invites/{token}", security(()), request_body = SignUp,
    params(("token" = String, Path, description = "The token from the invite URL (`#invite=…`).")),
    responses(
        (status = 200, description = "Created and logged in (Set-Cookie: ferry_session).", body = super::login::LoginResponse),
        (status = 400, description = "The name or password breaks the rules of `ferry user add`.", body = ErrorJson),
        (status = 404, description = "`invite_invalid`: unknown, used (also by a sign-up that won a race) or expired; `invites_disabled`.", body = ErrorJson),
        (status = 409, description = "The name is taken; the invite is still usable.", body = ErrorJson),
        (status = 429, description = "Too many failed attempts from this address; see Retry-After.", body = ErrorJson),
        (status = 503, description = "The password hashing pool is full; see Retry-After.", body = ErrorJson),
    ))]
pub async fn sign_up(
    State(services): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    ApiJson(req): ApiJson<SignUp>,
) -> Result<Response, ApiError> {
    plain("name", &req.name)?;
    let user = match invite::sign_up(
        &services.store,
        &services.accounts,
        &services.guard,
        peer.ip(),
        &token,
        &req.name,
        &req.password,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => return Ok(refusal(e)),
    };
    if let Err(e) = services.place_user(user.id, &user.name).await {
        // The user exists; whoever reconciles next starts them.
        tracing::warn!(user = %user.name, error = %e, "placing a new user");
    }
    super::login::start_session(&services, &user, peer).await
}

/// What `ferry user invite` asks for.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The account it creates may use the admin API.
    #[serde(default)]
    admin: bool,
    /// Seconds it lasts (default 7 days, at most 365 days).
    #[serde(default)]
    expires_secs: Option<u64>,
}

/// A new invite: the URL to hand out (shown once; the store keeps only a hash).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct NewInviteJson {
    pub url: String,
    pub token: String,
    pub admin: bool,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// Makes a one-time sign-up link (`ferry user invite`).
#[utoipa::path(post, path = "/invites", request_body = InviteRequest, responses(
    (status = 201, description = "Created; `url` is `<the node's public HTTP URL>/#invite=<token>`.", body = NewInviteJson),
    (status = 400, description = "Bad expiry.", body = ErrorJson),
    (status = 404, description = "`invites_disabled`: `[accounts] invites` is off.", body = ErrorJson),
    (status = 401, description = "No admin token or session.", body = ErrorJson),
    (status = 403, description = "Not an admin.", body = ErrorJson),
))]
pub async fn create_invite(
    State(services): State<Services>,
    _admin: Admin,
    ApiJson(req): ApiJson<InviteRequest>,
) -> Result<(StatusCode, Json<NewInviteJson>), ApiError> {
    let ttl = req
        .expires_secs
        .map_or(invite::DEFAULT_TTL, std::time::Duration::from_secs);
    let new = invite::create(&services.store, &services.accounts, req.admin, ttl).await?;
    let base = services
        .node
        .advertised
        .as_ref()
        .map_or("http://127.0.0.1:8080", |a| a.http.as_str());
    Ok((
        StatusCode::CREATED,
        Json(NewInviteJson {
            url: new.url(base),
            token: new.token,
            admin: new.admin,
            expires_at: rfc3339(new.expires_at),
        }),
    ))
}
