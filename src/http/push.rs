//! The Web Push API of the user API: the VAPID public key, this browser's
//! subscription, the user's push settings and muted buffers. Every route needs a
//! session, like the rest of the user API; all answer 404 `push_disabled` when the
//! node runs with `[push] enabled = false`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{find_buffer, find_network};
use super::openapi::ErrorJson;
use super::session::AuthUser;
use super::ApiError;
use crate::irc;
use crate::push::{Format, PushHub, SubscribeError};
use crate::services::Services;
use crate::store::PushSettings;

/// Keywords per user at most, and bytes per keyword.
const MAX_KEYWORDS: usize = 50;
const MAX_KEYWORD_LEN: usize = 100;

fn hub(services: &Services) -> Result<&Arc<PushHub>, ApiError> {
    services.push.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "push_disabled",
            "notifications are turned off on this server",
        )
    })
}

fn body<T>(body: Result<Json<T>, JsonRejection>, what: &str) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request(format!("invalid {what}: {}", e.body_text())))
}

#[derive(Serialize, ToSchema)]
pub struct VapidJson {
    /// The VAPID public key, base64url: `applicationServerKey` for
    /// `pushManager.subscribe`.
    public_key: String,
}

/// The VAPID public key (base64url), the `applicationServerKey` to subscribe with.
#[utoipa::path(get, path = "/api/push/vapid", responses(
    (status = 200, description = "The key.", body = VapidJson),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "Not found; `push_disabled` when notifications are off on this server.", body = ErrorJson),
))]
pub async fn vapid(
    State(services): State<Services>,
    _auth: AuthUser,
) -> Result<Json<VapidJson>, ApiError> {
    Ok(Json(VapidJson {
        public_key: hub(&services)?.application_server_key().to_owned(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionKeysJson {
    p256dh: String,
    auth: String,
}

/// `PushSubscription.toJSON()`; `expirationTime` is accepted and ignored.
#[derive(Deserialize, ToSchema)]
pub struct SubscribeRequest {
    endpoint: String,
    keys: SubscriptionKeysJson,
}

#[derive(Serialize, ToSchema)]
pub struct SubscribedJson {
    /// False when this endpoint was already registered (its keys are replaced).
    created: bool,
}

/// Register this browser's (or distributor's) push subscription: `PushSubscription.toJSON()`.
///
/// The endpoint must be https (http only when the server allows it); keys are
/// base64url. Registering an endpoint again replaces its keys.
#[utoipa::path(post, path = "/api/push/subscriptions", request_body = SubscribeRequest, responses(
    (status = 201, description = "Registered.", body = SubscribedJson),
    (status = 200, description = "Already registered; keys replaced.", body = SubscribedJson),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "Not found; `push_disabled` when notifications are off on this server.", body = ErrorJson),
))]
pub async fn subscribe(
    State(services): State<Services>,
    auth: AuthUser,
    req: Result<Json<SubscribeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let hub = hub(&services)?;
    let req = body(req, "subscription")?;
    match hub
        .subscribe(
            auth.user.id,
            &req.endpoint,
            &req.keys.p256dh,
            &req.keys.auth,
            Format::Json,
        )
        .await
    {
        Ok(created) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(SubscribedJson { created })).into_response())
        }
        Err(SubscribeError::Invalid(e)) => Err(ApiError::bad_request(e.to_string())),
        Err(SubscribeError::Store(e)) => Err(e.into()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeRequest {
    endpoint: String,
}

/// Remove a subscription by endpoint.
#[utoipa::path(delete, path = "/api/push/subscriptions", request_body = UnsubscribeRequest, responses(
    (status = 204, description = "Removed."),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
pub async fn unsubscribe(
    State(services): State<Services>,
    auth: AuthUser,
    req: Result<Json<UnsubscribeRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let hub = hub(&services)?;
    let req = body(req, "request")?;
    if hub.unsubscribe(auth.user.id, &req.endpoint).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no subscription with this endpoint"))
    }
}

#[derive(Serialize, ToSchema)]
pub struct MutedJson {
    network: String,
    buffer: String,
}

#[derive(Serialize, ToSchema)]
pub struct SettingsJson {
    /// Extra words that push (besides the nick).
    keywords: Vec<String>,
    /// No pushes while an IRC client is attached (a focused web client always
    /// holds them back).
    irc_is_active: bool,
    /// Muted buffers (set with `PUT /api/push/mute`).
    muted: Vec<MutedJson>,
}

async fn settings_json(
    services: &Services,
    user: crate::store::UserId,
) -> Result<SettingsJson, ApiError> {
    let settings = services.store.push_settings(user).await?;
    let networks = services.store.networks(user).await?;
    let mut muted = Vec::new();
    for (network, key) in services.store.push_mutes(user).await? {
        let Some(n) = networks.iter().find(|n| n.id == network) else {
            continue;
        };
        let name = services
            .store
            .buffers(network)
            .await?
            .into_iter()
            .find(|b| b.key == key)
            .map_or(key, |b| b.name);
        muted.push(MutedJson {
            network: n.name.clone(),
            buffer: irc::decode(&name).into_owned(),
        });
    }
    Ok(SettingsJson {
        keywords: settings.keywords,
        irc_is_active: settings.irc_is_active,
        muted,
    })
}

/// The user's push settings and muted buffers.
#[utoipa::path(get, path = "/api/push/settings", responses(
    (status = 200, description = "Settings.", body = SettingsJson),
    (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "Not found; `push_disabled` when notifications are off on this server.", body = ErrorJson),
))]
pub async fn settings(
    State(services): State<Services>,
    auth: AuthUser,
) -> Result<Json<SettingsJson>, ApiError> {
    hub(&services)?;
    Ok(Json(settings_json(&services, auth.user.id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsRequest {
    keywords: Vec<String>,
    irc_is_active: bool,
}

/// Replace the extra keywords (one line each, at most 50 of 100 bytes) and the IRC-client setting.
#[utoipa::path(put, path = "/api/push/settings", request_body = SettingsRequest, responses(
    (status = 200, description = "Settings now.", body = SettingsJson),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "Not found; `push_disabled` when notifications are off on this server.", body = ErrorJson),
))]
pub async fn set_settings(
    State(services): State<Services>,
    auth: AuthUser,
    req: Result<Json<SettingsRequest>, JsonRejection>,
) -> Result<Json<SettingsJson>, ApiError> {
    let hub = hub(&services)?;
    let req = body(req, "settings")?;
    if req.keywords.len() > MAX_KEYWORDS {
        return Err(ApiError::bad_request(format!(
            "invalid field `keywords`: at most {MAX_KEYWORDS}"
        )));
    }
    if let Some(k) = req
        .keywords
        .iter()
        .find(|k| k.len() > MAX_KEYWORD_LEN || k.contains(['\r', '\n', '\0']))
    {
        return Err(ApiError::bad_request(format!(
            "invalid keyword {k:?}: one line of at most {MAX_KEYWORD_LEN} bytes"
        )));
    }
    let settings = PushSettings {
        keywords: req.keywords,
        irc_is_active: req.irc_is_active,
    };
    services
        .store
        .set_push_settings(auth.user.id, &settings)
        .await?;
    hub.reload(auth.user.id).await;
    Ok(Json(settings_json(&services, auth.user.id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    network: String,
    buffer: String,
    muted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct MuteJson {
    network: String,
    buffer: String,
    muted: bool,
}

/// Mute or unmute a buffer: no pushes for its lines.
#[utoipa::path(put, path = "/api/push/mute", request_body = MuteRequest, responses(
    (status = 200, description = "The buffer's state.", body = MuteJson),
    (status = 400, description = "A query parameter or body field is invalid; the message names it.", body = ErrorJson), (status = 401, description = "No valid session (cookie `ferry_session` or `Authorization: Bearer`).", body = ErrorJson), (status = 404, description = "No such network or buffer for this user.", body = ErrorJson),
))]
pub async fn mute(
    State(services): State<Services>,
    auth: AuthUser,
    req: Result<Json<MuteRequest>, JsonRejection>,
) -> Result<Json<MuteJson>, ApiError> {
    let hub = hub(&services)?;
    let req = body(req, "mute request")?;
    let networks = services.store.networks(auth.user.id).await?;
    let network = find_network(&networks, &req.network)?;
    let buffer = find_buffer(&services, network, &req.buffer).await?;
    services
        .store
        .set_push_muted(network.id, &buffer.key, req.muted)
        .await?;
    hub.reload(auth.user.id).await;
    Ok(Json(MuteJson {
        network: network.name.clone(),
        buffer: irc::decode(&buffer.name).into_owned(),
        muted: req.muted,
    }))
}
