//! One structured log line per request: status, duration, outcome code and what the sandbox
//! used; the request span adds method, route and request id. Script text and output are never
//! logged. Handlers and the error mapping tell it what they know through response extensions.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::telemetry::millis;

/// The `code` of an error answer; a response without one is logged as `ok`.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeCode(pub &'static str);

/// What the sandbox used for the request's execution.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub sandbox_ms: u64,
    /// Where a cgroup measured it.
    pub memory_peak_bytes: Option<u64>,
}

pub async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let extensions = response.extensions();
    let code = extensions.get::<OutcomeCode>().map_or("ok", |code| code.0);
    let usage = extensions.get::<Usage>();
    tracing::info!(
        status = response.status().as_u16(),
        duration_ms = millis(started.elapsed()),
        code,
        sandbox_ms = usage.map(|usage| usage.sandbox_ms),
        memory_peak_bytes = usage.and_then(|usage| usage.memory_peak_bytes),
        "request"
    );
    response
}
