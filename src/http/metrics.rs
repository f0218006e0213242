//! `GET /metrics`: every metric in the OpenMetrics text format Prometheus scrapes.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::app::AppState;

/// What Prometheus asks for and `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics, with the gauges read from the sandbox now.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Metrics in the OpenMetrics text format", body = String, content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (running, queued) = state.sandbox.load();
    let text = state
        .metrics
        .render(running, queued, state.sandbox.is_warm());
    ([(header::CONTENT_TYPE, OPENMETRICS)], text)
}
