//! Every error the API answers with, and the one place that maps each to a status, a stable
//! `code` and a JSON body. Matches are exhaustive: a new variant must be given a status.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};

use super::log::Logged;
use crate::protocol::ErrorBody;
use crate::sandbox::{Output, SandboxError, ScriptFailure, signal_name};
use crate::validate::ValidationError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "5";
/// ... and after a 503 for a full queue: a slot frees up within a script's run.
const RETRY_AFTER_BUSY_SECS: &str = "1";

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("send the body as JSON with the header Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is too large for this service: GET / lists the limits")]
    BodyTooLarge,
    #[error(transparent)]
    InvalidScript(#[from] ValidationError),
    /// The script ran and failed: the caller's to fix, with what it printed.
    #[error("{}", .0.failure)]
    ScriptFailed(Box<FailedExecution>),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// `GET /health` when scripts cannot run.
    #[error("the sandbox is unavailable: {0}")]
    Unhealthy(String),
    #[error("no such endpoint: GET / lists the endpoints")]
    NotFound,
    #[error("method not allowed here: GET / lists each endpoint's method")]
    MethodNotAllowed,
    /// A non-JSON error produced below the handlers (a middleware's timeout, a panic).
    #[error("{message}")]
    Status { status: StatusCode, message: String },
}

/// A failed script and what it printed before failing.
#[derive(Debug)]
pub struct FailedExecution {
    pub failure: ScriptFailure,
    pub stdout: Output,
    pub stderr: Output,
    pub usage: Usage,
}

/// What the sandbox used, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub duration: Duration,
    pub memory_peak_bytes: Option<u64>,
}

impl Usage {
    pub fn logged(self, code: &'static str) -> Logged {
        Logged {
            code,
            sandbox_ms: Some(duration_ms(self.duration)),
            memory_peak_bytes: self.memory_peak_bytes,
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidRequest(_) | Self::ScriptFailed(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::InvalidScript(ValidationError::Empty) => StatusCode::BAD_REQUEST,
            Self::InvalidScript(ValidationError::TooLarge { .. }) | Self::BodyTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Sandbox(
                SandboxError::Unavailable(_) | SandboxError::Busy(_) | SandboxError::ShuttingDown,
            )
            | Self::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Sandbox(SandboxError::Internal { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Status { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge => "body_too_large",
            Self::InvalidScript(ValidationError::Empty) => "empty_script",
            Self::InvalidScript(ValidationError::TooLarge { .. }) => "script_too_large",
            Self::ScriptFailed(failed) => failure_code(&failed.failure),
            Self::Sandbox(SandboxError::Unavailable(_)) | Self::Unhealthy(_) => {
                "sandbox_unavailable"
            }
            Self::Sandbox(SandboxError::Busy(_)) => "busy",
            Self::Sandbox(SandboxError::ShuttingDown) => "shutting_down",
            Self::Sandbox(SandboxError::Internal { .. }) => "internal_error",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Status { status, .. } => status_code(*status),
        }
    }

    fn details(&self) -> Map<String, Value> {
        let value = match self {
            Self::InvalidScript(ValidationError::TooLarge { actual, limit }) => {
                json!({"script_bytes": actual, "limit_bytes": limit})
            }
            Self::ScriptFailed(failed) => failed.details(),
            Self::Unhealthy(_) => json!({"status": "unhealthy"}),
            Self::InvalidJson(_)
            | Self::InvalidRequest(_)
            | Self::UnsupportedMediaType
            | Self::BodyTooLarge
            | Self::InvalidScript(ValidationError::Empty)
            | Self::Sandbox(_)
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::Status { .. } => json!({}),
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

fn failure_code(failure: &ScriptFailure) -> &'static str {
    match failure {
        ScriptFailure::Syntax { .. } => "syntax_error",
        ScriptFailure::NoMain { .. } => "no_main",
        ScriptFailure::MainRequiresArguments { .. } => "main_requires_arguments",
        ScriptFailure::Exception { .. } => "script_exception",
        ScriptFailure::NotSerializable { .. } => "result_not_serializable",
        ScriptFailure::ResultTooLarge { .. } => "result_too_large",
        ScriptFailure::SysExit { .. } | ScriptFailure::Exited { .. } => "script_exited",
        ScriptFailure::Crashed { .. } => "script_crashed",
        ScriptFailure::TimeLimit { .. } => "time_limit_exceeded",
        ScriptFailure::MemoryLimit { .. } => "memory_limit_exceeded",
        ScriptFailure::CpuLimit { .. } => "cpu_limit_exceeded",
        ScriptFailure::UnreadableResult(_) => "result_unreadable",
    }
}

/// A code for a status that reached the client without an [`ApiError`] of ours.
fn status_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        408 | 504 => "request_timeout",
        413 => "body_too_large",
        500..=599 => "internal_error",
        _ => "bad_request",
    }
}

impl FailedExecution {
    fn details(&self) -> Value {
        let mut details = match &self.failure {
            ScriptFailure::Syntax {
                line, column, text, ..
            } => json!({"line": line, "column": column, "text": text}),
            ScriptFailure::Exception {
                type_name,
                message,
                traceback,
                ..
            } => {
                json!({"exception": {"type": type_name, "message": message, "traceback": traceback}})
            }
            ScriptFailure::NotSerializable { type_name, .. } => json!({"type": type_name}),
            ScriptFailure::ResultTooLarge { bytes, limit } => {
                json!({"result_bytes": bytes, "limit_bytes": limit})
            }
            ScriptFailure::SysExit { code } => json!({"exit_code": code}),
            ScriptFailure::Exited { code } => json!({"exit_code": code}),
            ScriptFailure::Crashed { signal } => {
                json!({"signal": signal, "signal_name": signal_name(*signal)})
            }
            ScriptFailure::TimeLimit { limit_ms } => json!({"time_limit_ms": limit_ms}),
            ScriptFailure::MemoryLimit { limit_bytes } => {
                json!({"memory_limit_bytes": limit_bytes})
            }
            ScriptFailure::CpuLimit { limit_secs } => json!({"cpu_limit_secs": limit_secs}),
            ScriptFailure::NoMain { .. }
            | ScriptFailure::MainRequiresArguments { .. }
            | ScriptFailure::UnreadableResult(_) => json!({}),
        };
        details["stdout"] = json!(self.stdout.text);
        details["stderr"] = json!(self.stderr.text);
        details["stdout_truncated"] = json!(self.stdout.truncated);
        details["stderr_truncated"] = json!(self.stderr.truncated);
        details["duration_ms"] = json!(duration_ms(self.usage.duration));
        details
    }
}

/// Whole milliseconds, saturating.
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(error) => Self::InvalidJson(error.body_text()),
            JsonRejection::JsonDataError(error) => Self::InvalidRequest(error.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(error)
                if error.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Self::BodyTooLarge
            }
            JsonRejection::BytesRejection(error) if caused_by_body_timeout(&error) => {
                Self::Status {
                    status: StatusCode::REQUEST_TIMEOUT,
                    message: "the request body did not arrive in time".to_owned(),
                }
            }
            other => Self::Status {
                status: other.status(),
                message: other.body_text(),
            },
        }
    }
}

/// Whether reading the body failed because the client was too slow (`RequestBodyTimeoutLayer`).
fn caused_by_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Details of our own faults go to the log, never to the caller.
            tracing::error!(error = %crate::telemetry::ErrorChain(&self), "request failed");
            "the service failed internally; retry, and report it if it persists".to_owned()
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: message,
            code: self.code(),
            details: self.details(),
        };
        let logged = match &self {
            Self::ScriptFailed(failed) => failed.usage.logged(body.code),
            _ => Logged {
                code: body.code,
                ..Logged::default()
            },
        };
        let mut response = (status, Extension(logged), Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let after = if matches!(self, Self::Sandbox(SandboxError::Busy(_))) {
                RETRY_AFTER_BUSY_SECS
            } else {
                RETRY_AFTER_SECS
            };
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        response
    }
}

/// Gives a JSON body to any error response that reached the client without one (tower-http's
/// timeout, the panic handler, an axum rejection we did not wrap), so every non-2xx is JSON.
pub async fn json_backstop(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if status.is_success() || status.is_informational() || status.is_redirection() || is_json {
        return response;
    }
    let message = match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            "the request took too long and was stopped; retry later".to_owned()
        }
        StatusCode::INTERNAL_SERVER_ERROR => {
            "the service failed internally; retry, and report it if it persists".to_owned()
        }
        other => other
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    let (mut parts, _) = response.into_parts();
    let mut fresh = ApiError::Status { status, message }.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    fresh.headers_mut().extend(parts.headers);
    fresh
}
