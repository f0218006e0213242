//! Every error the API answers with, and the one conversion from each to its body's `code` and
//! details ([`ErrorDetails`]); the status comes from the code (`ServiceError::status`), so a
//! new variant needs one decision. A 5xx body says only its code's fixed sentence: the error
//! itself, with its reason, is logged here, once.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::log::OutcomeCode;
use crate::admission::NoRoom;
use crate::job::JobError;
use crate::protocol::{ErrorBody, ErrorDetails, FailedScript, HealthStatus, ServiceError};
use crate::sandbox::SandboxError;
use crate::telemetry::ErrorChain;
use crate::validate::ValidationError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "5";
/// ... and after a 503 `busy`: a slot frees up within a script's run.
const RETRY_AFTER_BUSY_SECS: &str = "1";

/// An error answer of the API. Its `Display` is the body's `error` for a 4xx, and what is
/// logged for a 5xx.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the request body must be {{\"script\": \"<Python source>\"}}: {0}")]
    InvalidRequest(String),
    #[error("send the body as JSON with the header Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is too large for this service: GET / lists the limits")]
    BodyTooLarge,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error(transparent)]
    InvalidJob(#[from] JobError),
    /// The script ran and failed: the caller's to fix, with what it printed.
    #[error("{}", .0.failure)]
    ScriptFailed(Box<FailedScript>),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// `GET /health`'s 503: the same code as the sandbox's failures, with the reason in the
    /// body for the operator and the probes that read it.
    #[error("the sandbox is unavailable: {0}")]
    Unhealthy(String),
    /// Too many request bodies are being received at once.
    #[error(transparent)]
    Crowded(#[from] NoRoom),
    #[error("no such endpoint: GET / lists the endpoints")]
    NotFound,
    #[error("method not allowed here: GET / lists each endpoint's method")]
    MethodNotAllowed,
    /// The whole request outlasted the backstop timeout: a fault, since the sandbox's own
    /// limits answer first.
    #[error("the request outlasted the backstop timeout (queue wait, time limit and body read)")]
    TooSlow,
    /// A fault of the service itself, logged where it happened.
    #[error("the service failed internally")]
    Internal,
    /// A malformed request no other variant covers, refused below the handlers.
    #[error("{0}")]
    BadRequest(String),
}

impl ApiError {
    /// The body's `code` and details, which decide its status: the one match from an error to
    /// what the client gets.
    fn into_details(self) -> ErrorDetails {
        let service = match self {
            Self::ScriptFailed(failed) => return ErrorDetails::Script(failed),
            Self::InvalidJson(_) => ServiceError::InvalidJson,
            Self::InvalidRequest(_) => ServiceError::InvalidRequest,
            Self::UnsupportedMediaType => ServiceError::UnsupportedMediaType,
            Self::BodyTooLarge => ServiceError::BodyTooLarge,
            Self::BodyTimeout => ServiceError::RequestTimeout,
            Self::InvalidJob(error) => match error {
                JobError::Script(ValidationError::Empty) => ServiceError::EmptyScript,
                JobError::InputTooDeep { depth, limit } => ServiceError::InvalidInput {
                    depth,
                    limit_depth: limit,
                },
                JobError::Script(ValidationError::TooLarge { actual, limit }) => {
                    ServiceError::ScriptTooLarge {
                        script_bytes: actual,
                        limit_bytes: limit,
                    }
                }
                JobError::FilePath { index, .. } | JobError::FileContent { index, .. } => {
                    ServiceError::InvalidFile { index }
                }
                JobError::TooManyFiles { count, limit } => ServiceError::TooManyFiles {
                    files: count,
                    limit_files: limit,
                },
                JobError::FilesTooLarge { bytes, limit } => ServiceError::FilesTooLarge {
                    files_bytes: bytes,
                    limit_bytes: limit,
                },
                JobError::Pattern(_) => ServiceError::InvalidReturnFiles,
                JobError::Limit { name, max, .. } => {
                    ServiceError::InvalidLimit { name, maximum: max }
                }
            },
            Self::Sandbox(SandboxError::Unavailable(_)) => ServiceError::SandboxUnavailable {
                status: HealthStatus::Unhealthy,
                reason: None,
            },
            Self::Unhealthy(reason) => ServiceError::SandboxUnavailable {
                status: HealthStatus::Unhealthy,
                reason: Some(reason),
            },
            Self::Sandbox(SandboxError::Busy(_)) | Self::Crowded(_) => ServiceError::Busy,
            Self::Sandbox(SandboxError::ShuttingDown) => ServiceError::ShuttingDown,
            Self::Sandbox(SandboxError::Internal { .. }) | Self::Internal | Self::TooSlow => {
                ServiceError::InternalError
            }
            Self::NotFound => ServiceError::NotFound,
            Self::MethodNotAllowed => ServiceError::MethodNotAllowed,
            Self::BadRequest(_) => ServiceError::BadRequest,
        };
        ErrorDetails::Service(service)
    }

    /// The error for a response that left a layer below the handlers without a JSON body. A
    /// status with no code of its own is answered as the nearest code's: another 4xx as 400
    /// `bad_request`, another 5xx as 500 `internal_error`.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => Self::BodyTooLarge,
            StatusCode::REQUEST_TIMEOUT => Self::BodyTimeout,
            // The backstop timeout answers 503 (`TimeoutLayer` in `http/mod.rs`).
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => Self::TooSlow,
            status if status.is_server_error() => Self::Internal,
            status => Self::BadRequest(
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_lowercase(),
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // serde's own words (what was expected, where), without axum's preamble.
        let cause = |error: &dyn std::error::Error| {
            error
                .source()
                .map_or_else(|| error.to_string(), ToString::to_string)
        };
        match rejection {
            JsonRejection::JsonSyntaxError(error) => Self::InvalidJson(cause(&error)),
            JsonRejection::JsonDataError(error) => Self::InvalidRequest(cause(&error)),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(error)
                if error.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Self::BodyTooLarge
            }
            other if other.status().is_server_error() => Self::Internal,
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let said = self.to_string();
        let chain = ErrorChain(&self).to_string();
        let details = self.into_details();
        let status = details.status();
        let error = match &details {
            ErrorDetails::Service(code) => match code.fixed_message() {
                Some(sentence) => {
                    log(code, &chain);
                    sentence.to_owned()
                }
                None => said,
            },
            ErrorDetails::Script(_) => said,
        };
        let retry_after = match &details {
            ErrorDetails::Service(ServiceError::Busy) => Some(RETRY_AFTER_BUSY_SECS),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECS),
            _ => None,
        };
        let code = OutcomeCode(details.code());
        let body = ErrorBody { error, details };
        let mut response = (status, Extension(code), Json(body)).into_response();
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        response
    }
}

/// The one log line of a 5xx, inside the request's span: what its body leaves out. Overload
/// and shutdown are the load's doing (warn); anything else is a failure to look at (error).
fn log(code: &ServiceError, error: &str) {
    match code {
        ServiceError::Busy | ServiceError::ShuttingDown => {
            tracing::warn!(code = <&str>::from(code), error, "request refused");
        }
        _ => tracing::error!(code = <&str>::from(code), error, "request failed"),
    }
}
