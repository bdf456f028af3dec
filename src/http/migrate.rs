//! The node side of `ferry migrate`: `/api/admin/migrate/…` (admin-token or admin
//! session, like the rest of the admin API).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};

use super::admin::Admin;
use super::input::ApiJson;
use super::ApiError;
use crate::migrate::{
    handoff, preflight, AdoptRequest, Adopted, PreflightReport, PreflightRequest, ReleaseRequest,
    Released, ReserveRequest, Reserved,
};
use crate::services::Services;
use crate::store::UserId;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/preflight", post(run_preflight))
        .route("/reserve/{user}", post(reserve))
        .route("/release/{user}", post(release))
        .route("/adopt/{user}", post(adopt))
}

/// No handoff step starts while the node rides out a store outage: each one ends in a
/// compare-and-set in the store, and a release would QUIT a user it cannot hand over.
fn store_needed(services: &Services) -> Result<(), ApiError> {
    if services.lease.riding_out() {
        return Err(ApiError::store_away());
    }
    Ok(())
}

fn failed(e: anyhow::Error) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "migrate_failed",
        format!("{e:#}"),
    )
}

async fn run_preflight(
    State(services): State<Services>,
    _admin: Admin,
    ApiJson(req): ApiJson<PreflightRequest>,
) -> Result<Json<PreflightReport>, ApiError> {
    Ok(Json(preflight::run(&services, &req).await))
}

async fn reserve(
    State(services): State<Services>,
    _admin: Admin,
    Path(user): Path<UserId>,
    ApiJson(req): ApiJson<ReserveRequest>,
) -> Result<Json<Reserved>, ApiError> {
    store_needed(&services)?;
    handoff::reserve(&services, user, Duration::from_millis(req.ttl_ms))
        .await
        .map(Json)
        .map_err(failed)
}

async fn release(
    State(services): State<Services>,
    _admin: Admin,
    Path(user): Path<UserId>,
    ApiJson(req): ApiJson<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    store_needed(&services)?;
    handoff::release(&services, user, &req.to, req.quit_message)
        .await
        .map(Json)
        .map_err(failed)
}

async fn adopt(
    State(services): State<Services>,
    _admin: Admin,
    Path(user): Path<UserId>,
    ApiJson(req): ApiJson<AdoptRequest>,
) -> Result<Json<Adopted>, ApiError> {
    store_needed(&services)?;
    handoff::adopt(
        &services,
        user,
        &req.snapshot,
        req.quit_at_ms,
        Duration::from_millis(req.deadline_ms),
    )
    .await
    .map(Json)
    .map_err(failed)
}
