//! One structured log line per request, and its metrics: status, latency, sizes, user agent,
//! the trace it belongs to, the outcome code and what the sandbox used; the request span adds
//! method, route and request ids. Every value a client chose (method, path, user agent) is
//! logged [`bounded`](crate::telemetry::bounded), so no request makes a long line. With JSON
//! logs the line is in the shape Cloud Logging reads (`telemetry.rs`): its `http_request.*`
//! fields become `httpRequest`, `trace` becomes `logging.googleapis.com/trace`. Script text and
//! output are never logged. Handlers and the error mapping tell it what they know through
//! response extensions.

use std::time::{Duration, Instant};

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::metrics::ExecutionRecord;
use crate::protocol::millis;

/// The `code` of an error answer; a response without one is logged as `ok`.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeCode(pub &'static str);

/// What the sandbox did for the request's execution.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// `warm` or `cold`.
    pub path: &'static str,
    /// The profile it ran in.
    pub profile: &'static str,
    pub queue_wait: Duration,
    pub sandbox_run: Duration,
    /// Where a cgroup measured it.
    pub memory_peak_bytes: Option<u64>,
}

pub async fn access_log(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = crate::telemetry::bounded(request.method().as_str()).into_owned();
    let path = crate::telemetry::bounded(request.uri().path()).into_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let headers = request.headers();
    let request_size = content_length(headers);
    let user_agent = headers
        .get(header::USER_AGENT)
        .map(crate::telemetry::header_text);
    let trace = trace_id(headers).map(|id| match &state.config.server.trace_project {
        Some(project) => format!("projects/{project}/traces/{id}"),
        None => id,
    });
    let response = next.run(request).await;
    let took = started.elapsed();
    let extensions = response.extensions();
    let code = extensions.get::<OutcomeCode>().map_or("ok", |code| code.0);
    let usage = extensions.get::<Usage>().copied();
    let status = response.status().as_u16();
    tracing::info!(
        http_request.request_method = method,
        http_request.request_url = path,
        http_request.status = status,
        http_request.latency = format!("{:.6}s", took.as_secs_f64()),
        http_request.request_size = request_size,
        http_request.response_size = response.body().size_hint().exact(),
        http_request.user_agent = user_agent,
        trace,
        code,
        duration_ms = millis(took),
        path = usage.map(|usage| usage.path),
        queue_ms = usage.map(|usage| millis(usage.queue_wait)),
        sandbox_ms = usage.map(|usage| millis(usage.sandbox_run)),
        memory_peak_bytes = usage.and_then(|usage| usage.memory_peak_bytes),
        "request"
    );
    let execution = (route == "/execute").then(|| ExecutionRecord {
        code,
        path: usage.map_or("none", |usage| usage.path),
        profile: usage.map_or_else(|| state.sandbox.profile().name(), |usage| usage.profile),
        queue_wait: usage.map(|usage| usage.queue_wait),
        sandbox_run: usage.map(|usage| usage.sandbox_run),
    });
    state
        .metrics
        .record_request(&route, status, took, execution);
    response
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The trace a request belongs to: Cloud Run's `X-Cloud-Trace-Context: TRACE/SPAN;o=1`, or the
/// W3C `traceparent: 00-TRACE-SPAN-01`. Only a well-formed 32-digit hex id is taken.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let id = header("x-cloud-trace-context")
        .and_then(|value| value.split('/').next())
        .or_else(|| header("traceparent").and_then(|value| value.split('-').nth(1)))?;
    (id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn traces_come_from_cloud_run_s_header_or_w3c_s() {
        let mut headers = HeaderMap::new();
        assert_eq!(trace_id(&headers), None);
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(
            trace_id(&headers).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        headers.insert(
            "x-cloud-trace-context",
            HeaderValue::from_static("105445aa7843bc8bf206b12000100000/1;o=1"),
        );
        assert_eq!(
            trace_id(&headers).as_deref(),
            Some("105445aa7843bc8bf206b12000100000")
        );
        headers.insert("x-cloud-trace-context", HeaderValue::from_static("nope/1"));
        assert_eq!(trace_id(&headers), None);
    }
}
