//! `GET /`: what the service offers, for a curl user (a browser page comes later).

use axum::Json;
use axum::extract::State;

use crate::app::AppState;
use crate::protocol::{Endpoint, InfoResponse};

/// What the service offers: endpoints, limits, isolation.
#[utoipa::path(get, path = "/", responses((status = 200, description = "The service's description", body = InfoResponse)))]
pub(super) async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    Json(InfoResponse {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        description: "Runs a Python script's main() in an nsjail sandbox and returns its JSON result and stdout.",
        endpoints: vec![
            Endpoint {
                method: "POST",
                path: "/execute",
                description: "Body {\"script\": \"def main(): ...\"} (Content-Type: application/json); \
                              answers {\"result\": <main()'s return value>, \"stdout\": \"...\"}.",
            },
            Endpoint {
                method: "GET",
                path: "/health",
                description: "200 {\"status\": \"healthy\", ...} with the active jail profile and what it \
                              guarantees when scripts can run, 503 with the reason otherwise.",
            },
            Endpoint {
                method: "GET",
                path: "/",
                description: "This description.",
            },
            Endpoint {
                method: "GET",
                path: "/openapi.json",
                description: "The API as an OpenAPI 3.1 document: every request, status and body.",
            },
        ],
        limits: state.config.limits.clone(),
        isolation: state.sandbox.isolation(),
    })
}
