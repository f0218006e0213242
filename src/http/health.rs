//! `GET /health`: 200 when scripts can run, with the active profile and what it guarantees;
//! 503 otherwise, with the sandbox's reason in `reason` (for the operator and Cloud Run's
//! probes: the one answer that says it, where `POST /execute` says only its fixed sentence).

use axum::Json;
use axum::extract::State;

use super::ApiError;
use crate::app::AppState;
use crate::protocol::{ErrorBody, FailedProfile, HealthResponse, HealthStatus};

/// Whether scripts can run, and how strongly they are isolated.
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "Scripts can run", body = HealthResponse),
        (status = 503, description = "The sandbox is unavailable; the reason is in `reason`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn health(
    State(state): State<AppState>,
) -> Result<Json<HealthResponse>, ApiError> {
    let sandbox = &state.sandbox;
    sandbox.health().await.map_err(ApiError::Unhealthy)?;
    let warm = sandbox.warm_state();
    Ok(Json(HealthResponse {
        status: HealthStatus::Healthy,
        profile: sandbox.profile().name(),
        isolation: sandbox.isolation(),
        path: if warm.on { "warm" } else { "cold" },
        cold_reason: warm.reason,
        failed_profiles: sandbox
            .failed_profiles()
            .into_iter()
            .map(|failure| FailedProfile {
                profile: failure.profile.name(),
                reason: failure.reason,
            })
            .collect(),
    }))
}
