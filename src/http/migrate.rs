//! The node side of `ferry migrate`: `/api/admin/migrate/…` (admin-token or admin
//! session, like the rest of the admin API).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};

use super::admin::authorize;
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

fn failed(e: anyhow::Error) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "migrate_failed",
        format!("{e:#}"),
    )
}

async fn run_preflight(
    State(services): State<Services>,
    headers: HeaderMap,
    Json(req): Json<PreflightRequest>,
) -> Result<Json<PreflightReport>, ApiError> {
    authorize(&services, &headers).await?;
    Ok(Json(preflight::run(&services, &req).await))
}

async fn reserve(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(user): Path<UserId>,
    Json(req): Json<ReserveRequest>,
) -> Result<Json<Reserved>, ApiError> {
    authorize(&services, &headers).await?;
    handoff::reserve(&services, user, Duration::from_millis(req.ttl_ms))
        .await
        .map(Json)
        .map_err(failed)
}

async fn release(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(user): Path<UserId>,
    Json(req): Json<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    authorize(&services, &headers).await?;
    handoff::release(&services, user, &req.to, req.quit_message)
        .await
        .map(Json)
        .map_err(failed)
}

async fn adopt(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(user): Path<UserId>,
    Json(req): Json<AdoptRequest>,
) -> Result<Json<Adopted>, ApiError> {
    authorize(&services, &headers).await?;
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
