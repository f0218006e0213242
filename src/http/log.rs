//! One structured log line per request: route, status, duration, outcome code and what the
//! sandbox used; the request span adds method, route and request id. Script text and output
//! are never logged.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// What a response tells the log, set by the handlers and the error mapping.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logged {
    /// The error code, or `ok`.
    pub code: &'static str,
    /// The sandbox's wall time and peak memory (where a cgroup measured it).
    pub sandbox_ms: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
}

pub async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let logged = response
        .extensions()
        .get::<Logged>()
        .copied()
        .unwrap_or_default();
    let code = if logged.code.is_empty() {
        "ok"
    } else {
        logged.code
    };
    tracing::info!(
        status = response.status().as_u16(),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        code,
        sandbox_ms = logged.sandbox_ms,
        memory_peak_bytes = logged.memory_peak_bytes,
        "request"
    );
    response
}
