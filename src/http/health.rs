//! `GET /health`: 200 when scripts can run, 503 with the reason otherwise (Cloud Run's probes).

use axum::Json;
use axum::extract::State;

use super::ApiError;
use crate::app::AppState;
use crate::protocol::HealthResponse;
use crate::sandbox::profile_name;

pub(super) async fn health(
    State(state): State<AppState>,
) -> Result<Json<HealthResponse>, ApiError> {
    state.sandbox.health().await.map_err(ApiError::Unhealthy)?;
    Ok(Json(HealthResponse {
        status: "healthy",
        profile: profile_name(&state.config.sandbox.profile),
    }))
}
