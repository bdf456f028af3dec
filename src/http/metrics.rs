//! `GET /metrics`: the node's metrics registry (`services::Metrics`, where every
//! metric is named) in the Prometheus text format (version 0.0.4). A scrape reads
//! values kept up to date as things change; it asks no user actor anything.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

use crate::services::Services;

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", security(()),
    responses((status = 200, description = "Metrics.", content_type = "text/plain")))]
pub async fn metrics(State(services): State<Services>) -> impl IntoResponse {
    // Riding out a store outage, the figures read from the store are left as they
    // were: asking for them would wait for the store's connect timeout.
    let store = (!services.lease.riding_out()).then_some(&services.store);
    let body = services.metrics.scrape(store).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}
