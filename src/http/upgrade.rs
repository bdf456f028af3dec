//! `POST /api/admin/upgrade`: what `ferry upgrade` calls. The node started by `ferry
//! serve` hands itself over to a new binary (see `crate::upgrade` and
//! `server::upgrade`); the answer comes once the new process serves, or with the
//! reason it did not (the node then serves on, as before).

use axum::http::StatusCode;
use axum::{Extension, Json};

use super::admin::Admin;
use super::input::ApiJson;
use super::ApiError;
use crate::upgrade::{Report, Trigger, UpgradeRequest};

pub(super) async fn upgrade(
    _admin: Admin,
    trigger: Option<Extension<Trigger>>,
    ApiJson(req): ApiJson<UpgradeRequest>,
) -> Result<Json<Report>, ApiError> {
    let Some(Extension(trigger)) = trigger else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node cannot upgrade in place (it was not started by `ferry serve`)",
        ));
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if trigger.try_send((req, tx)).is_err() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "busy",
            "an upgrade of this node is already under way",
        ));
    }
    match rx.await {
        Ok(Ok(report)) => Ok(Json(report)),
        Ok(Err(reason)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "upgrade_failed",
            reason,
        )),
        Err(_) => Err(ApiError::internal("the upgrade ended without an outcome")),
    }
}
