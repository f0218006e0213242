//! One structured log line per request, and its metrics: status, latency, sizes, user agent,
//! the trace it belongs to, the outcome code and what the sandbox used; the request span adds
//! method, route and request ids. Every value a client chose (method, path, user agent) is
//! logged [`bounded`](crate::telemetry::bounded), so no request makes a long line. A streamed
//! answer is logged when its stream ends, with its execution's outcome ([`Seen::record`]). With JSON
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

/// Marks a response whose log line and metrics wait for its stream to end: the stream calls
/// [`Seen::record`] with the outcome it carried.
#[derive(Debug, Clone, Copy)]
pub struct Deferred;

/// What the access log knows of a request before it is answered. It is in the request's
/// extensions, so a handler whose answer ends after its response began can record it.
#[derive(Debug, Clone)]
pub struct Seen {
    started: Instant,
    method: String,
    path: String,
    route: String,
    request_size: Option<u64>,
    user_agent: Option<String>,
    trace: Option<String>,
    /// The request's span, for a line written after its response left the span.
    span: tracing::Span,
}

/// How a request was answered, for its line and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    /// The HTTP status sent; a stream's is 200 whatever its execution came to.
    pub status: u16,
    pub response_size: Option<u64>,
    /// `ok` or the error code of the answer (a stream's: of its last event).
    pub code: &'static str,
    pub usage: Option<Usage>,
    /// The status the answer carried in a stream's last event.
    pub streamed: Option<u16>,
}

impl Answered {
    /// What a response says of itself: its status, size, and what its extensions tell.
    pub fn from_response(response: &Response) -> Self {
        let extensions = response.extensions();
        Self {
            status: response.status().as_u16(),
            response_size: response.body().size_hint().exact(),
            code: extensions.get::<OutcomeCode>().map_or("ok", |code| code.0),
            usage: extensions.get::<Usage>().copied(),
            streamed: None,
        }
    }
}

impl Seen {
    fn new(state: &AppState, request: &Request) -> Self {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
            .to_owned();
        let headers = request.headers();
        Self {
            started: Instant::now(),
            method: crate::telemetry::bounded(request.method().as_str()).into_owned(),
            path: crate::telemetry::bounded(request.uri().path()).into_owned(),
            route,
            request_size: content_length(headers),
            user_agent: headers
                .get(header::USER_AGENT)
                .map(crate::telemetry::header_text),
            trace: trace_id(headers).map(|id| match &state.config.server.trace_project {
                Some(project) => format!("projects/{project}/traces/{id}"),
                None => id,
            }),
            span: tracing::Span::current(),
        }
    }

    /// Writes the request's line and records its metrics.
    pub fn record(&self, state: &AppState, answered: Answered) {
        let _span = self.span.enter();
        let took = self.started.elapsed();
        let Answered {
            status,
            response_size,
            code,
            usage,
            streamed,
        } = answered;
        tracing::info!(
            http_request.request_method = self.method,
            http_request.request_url = self.path,
            http_request.status = status,
            http_request.latency = format!("{:.6}s", took.as_secs_f64()),
            http_request.request_size = self.request_size,
            http_request.response_size = response_size,
            http_request.user_agent = self.user_agent,
            trace = self.trace,
            code,
            streamed_status = streamed,
            duration_ms = millis(took),
            path = usage.map(|usage| usage.path),
            queue_ms = usage.map(|usage| millis(usage.queue_wait)),
            sandbox_ms = usage.map(|usage| millis(usage.sandbox_run)),
            memory_peak_bytes = usage.and_then(|usage| usage.memory_peak_bytes),
            "request"
        );
        let execution = (self.route == "/execute").then(|| ExecutionRecord {
            code,
            path: usage.map_or("none", |usage| usage.path),
            profile: usage.map_or_else(|| state.sandbox.profile().name(), |usage| usage.profile),
            queue_wait: usage.map(|usage| usage.queue_wait),
            sandbox_run: usage.map(|usage| usage.sandbox_run),
            streamed: streamed.is_some(),
        });
        state
            .metrics
            .record_request(&self.route, status, took, execution);
    }
}

pub async fn access_log(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let seen = Seen::new(&state, &request);
    request.extensions_mut().insert(seen.clone());
    let response = next.run(request).await;
    if response.extensions().get::<Deferred>().is_none() {
        seen.record(&state, Answered::from_response(&response));
    }
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
