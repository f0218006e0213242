//! `GET /`: what the service offers, for a curl user (a browser page comes later).

use axum::Json;
use axum::extract::State;

use crate::app::AppState;
use crate::protocol::{Endpoint, InfoLimits, InfoResponse};

pub(super) async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    let limits = &state.config.limits;
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
        ],
        limits: InfoLimits {
            script_bytes: limits.script_bytes,
            time_limit_ms: limits.time_limit_ms,
            output_bytes: limits.output_bytes,
            result_bytes: limits.result_bytes,
            memory_bytes: limits.memory_bytes,
            processes: limits.processes,
            cpu_secs: limits.cpu_secs,
            tmp_bytes: limits.tmp_bytes,
            file_bytes: limits.file_bytes,
            open_files: limits.open_files,
        },
        isolation: state.sandbox.isolation(),
    })
}
