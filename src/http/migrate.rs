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
use crate::node::NodeRef;
use crate::store::UserId;

pub fn router() -> Router<NodeRef> {
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
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Json(req): Json<PreflightRequest>,
) -> Result<Json<PreflightReport>, ApiError> {
    authorize(&node, &headers).await?;
    Ok(Json(preflight::run(&node, &req).await))
}

async fn reserve(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(user): Path<UserId>,
    Json(req): Json<ReserveRequest>,
) -> Result<Json<Reserved>, ApiError> {
    authorize(&node, &headers).await?;
    handoff::reserve(&node, user, Duration::from_millis(req.ttl_ms))
        .await
        .map(Json)
        .map_err(failed)
}

async fn release(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(user): Path<UserId>,
    Json(req): Json<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    authorize(&node, &headers).await?;
    handoff::release(&node, user, &req.to, req.quit_message)
        .await
        .map(Json)
        .map_err(failed)
}

async fn adopt(
    State(node): State<NodeRef>,
    headers: HeaderMap,
    Path(user): Path<UserId>,
    Json(req): Json<AdoptRequest>,
) -> Result<Json<Adopted>, ApiError> {
    authorize(&node, &headers).await?;
    handoff::adopt(
        &node,
        user,
        &req.snapshot,
        req.quit_at_ms,
        Duration::from_millis(req.deadline_ms),
    )
    .await
    .map(Json)
    .map_err(failed)
}
