//! HTTP: health checks, metrics, the user API (login sessions, networks, buffers,
//! history, search, read markers, Web Push subscriptions and settings), its OpenAPI
//! description, and the admin API.
//!
//! Only this module knows JSON over HTTP. Handlers call into `admin`, the
//! store and user actors; errors become [`ApiError`]s.

mod admin;
mod api;
mod error;
mod input;
mod login;
mod metrics;
mod migrate;
mod openapi;
mod push;
mod session;
mod web;
pub mod ws;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;

use crate::services::Services;

pub fn router(services: Services) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route(
            "/style.css",
            get(|| web::asset(axum::extract::Path("style.css".into()))),
        )
        .route(
            "/favicon.svg",
            get(|| web::asset(axum::extract::Path("favicon.svg".into()))),
        )
        // The service worker: at the root, so its scope is the whole client.
        .route(
            "/sw.js",
            get(|| web::asset(axum::extract::Path("sw.js".into()))),
        )
        .route("/js/{file}", get(web::script))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/api/openapi.json", get(openapi::openapi))
        .route("/api/login", post(login::login))
        .route("/api/logout", post(login::logout))
        .route("/api/password", post(login::change_password))
        .route("/api/me", get(api::me))
        .route("/api/networks", get(api::networks))
        .route("/api/buffers", get(api::buffers))
        .route("/api/history", get(api::history))
        .route("/api/search", get(api::search))
        .route("/api/read", post(api::read))
        .route("/api/push/vapid", get(push::vapid))
        .route(
            "/api/push/subscriptions",
            post(push::subscribe).delete(push::unsubscribe),
        )
        .route(
            "/api/push/settings",
            get(push::settings).put(push::set_settings),
        )
        .route("/api/push/mute", axum::routing::put(push::mute))
        .route("/ws", get(ws::ws))
        .nest("/api/admin", admin::router())
        .nest("/api/admin/migrate", migrate::router())
        .with_state(services)
}

/// The process is up.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The node can serve: the store answers and the node is not shutting down.
async fn readyz(State(services): State<Services>) -> impl IntoResponse {
    let store_ok = services.store.ping().await.is_ok();
    let running = !services.shutdown.is_cancelled();
    let status = if store_ok && running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "store": store_ok,
            "running": running,
            "users": services.users.count(),
            "node": services.node.id,
        })),
    )
}
