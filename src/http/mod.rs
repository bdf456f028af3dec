//! HTTP: health checks, metrics, the user API (login sessions, networks, buffers,
//! history, search, read markers, Web Push subscriptions and settings, sign-up with
//! an invite), its OpenAPI
//! description, and the admin API.
//!
//! Only this module knows JSON over HTTP. Handlers call into `admin`, the
//! store and user actors; errors become [`ApiError`]s.

mod account;
mod admin;
mod api;
mod error;
mod input;
mod invites;
mod login;
mod metrics;
mod migrate;
mod openapi;
mod push;
mod session;
mod upgrade;
mod web;
pub mod ws;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;

use crate::services::Services;

pub fn router(services: Services) -> Router {
    let (documented, _) = documented().split_for_parts();
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
        .route("/ws", get(ws::ws))
        .merge(documented)
        .nest("/api/admin/migrate", migrate::router())
        .with_state(services)
}

/// The routes `openapi.json` describes: each handler's `#[utoipa::path]` gives its
/// path and methods, so the router and the document are built from this one list.
fn documented() -> OpenApiRouter<Services> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::openapi))
        .routes(routes!(login::login))
        .routes(routes!(login::logout))
        .routes(routes!(login::change_password))
        .routes(routes!(account::change_password))
        .routes(routes!(account::away_settings, account::update_away))
        .routes(routes!(api::me))
        .routes(routes!(invites::get_invite, invites::sign_up))
        .routes(routes!(api::networks, account::create_network))
        .routes(routes!(
            account::get_network,
            account::update_network,
            account::delete_network
        ))
        .routes(routes!(account::join_channel))
        .routes(routes!(account::part_channel, account::update_channel))
        .routes(routes!(api::buffers))
        .routes(routes!(api::history))
        .routes(routes!(api::search))
        .routes(routes!(api::read))
        .routes(routes!(push::vapid))
        .routes(routes!(push::subscribe, push::unsubscribe))
        .routes(routes!(push::settings, push::set_settings))
        .routes(routes!(push::mute))
        .nest("/api/admin", admin::router())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "Up.")))]
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok", "version": crate::upgrade::version() }))
}

/// The node can serve: the store answers and the node is not shutting down. While the
/// node rides out a store outage it is *degraded*: attached clients keep working, but
/// nothing that needs the store does, so it is not ready (503, `status: degraded` and
/// the reason in the body).
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "Ready."),
    (status = 503, description = "Not ready, or degraded (the store is unreachable)."),
))]
async fn readyz(State(services): State<Services>) -> impl IntoResponse {
    let riding_out = services.lease.riding_out();
    // Riding out, the store is known away: no ping that would wait for it.
    let store_ok = !riding_out && services.store.ping().await.is_ok();
    let running = !services.shutdown.is_cancelled();
    let status = if store_ok && running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let held = services.writer.metrics().held_lines.get();
    let (state, reason) = if !running {
        ("stopping", Some("the node is shutting down".to_owned()))
    } else if riding_out {
        (
            "degraded",
            Some(format!(
                "the store is unreachable: riding the outage out (sessions kept, {held} lines held for the store)"
            )),
        )
    } else if !store_ok {
        ("unavailable", Some("the store does not answer".to_owned()))
    } else {
        ("ready", None)
    };
    (
        status,
        Json(json!({
            "status": state,
            "reason": reason,
            "held_lines": held,
            "store": store_ok,
            "running": running,
            "users": services.users.count(),
            "node": services.node.id,
        })),
    )
}
