//! Every error the API answers with, and the one place that maps each to a status and a body
//! (its `code` and details). Matches are exhaustive: a new variant must be given a status.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::log::OutcomeCode;
use crate::job::JobError;
use crate::protocol::{ErrorBody, ErrorDetails, FailedScript, HealthStatus, ServiceError};
use crate::sandbox::SandboxError;
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
    /// Too much at once in front of the sandbox (bodies, connections): retry shortly.
    #[error("the service is busy: {0}; retry shortly")]
    Busy(&'static str),
    #[error("no such endpoint: GET / lists the endpoints")]
    NotFound,
    #[error("method not allowed here: GET / lists each endpoint's method")]
    MethodNotAllowed,
    /// The whole request outlasted the backstop timeout (the sandbox's own limits answer first).
    #[error("the request took too long and was stopped; retry later")]
    TooSlow,
    /// A fault of the service itself; what went wrong is in the log, never in the answer.
    #[error("the service failed internally; retry, and report it if it persists")]
    Internal,
    /// Another status produced below the handlers.
    #[error("{message}")]
    Other { status: StatusCode, message: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::InvalidRequest(_)
            | Self::ScriptFailed(_)
            | Self::InvalidJob(
                JobError::Script(ValidationError::Empty)
                | JobError::InputTooDeep { .. }
                | JobError::FilePath { .. }
                | JobError::FileContent { .. }
                | JobError::TooManyFiles { .. }
                | JobError::Pattern(_)
                | JobError::Limit { .. },
            ) => StatusCode::BAD_REQUEST,
            Self::InvalidJob(
                JobError::Script(ValidationError::TooLarge { .. }) | JobError::FilesTooLarge { .. },
            )
            | Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Sandbox(
                SandboxError::Unavailable(_) | SandboxError::Busy(_) | SandboxError::ShuttingDown,
            )
            | Self::Busy(_)
            | Self::TooSlow => StatusCode::SERVICE_UNAVAILABLE,
            Self::Sandbox(SandboxError::Internal { .. }) | Self::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Other { status, .. } => *status,
        }
    }

    /// The body's `code` and details.
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
            },
            Self::Sandbox(SandboxError::Busy(_)) | Self::Busy(_) => ServiceError::Busy,
            Self::Sandbox(SandboxError::ShuttingDown) => ServiceError::ShuttingDown,
            Self::Sandbox(SandboxError::Internal { .. }) | Self::Internal | Self::TooSlow => {
                ServiceError::InternalError
            }
            Self::NotFound => ServiceError::NotFound,
            Self::MethodNotAllowed => ServiceError::MethodNotAllowed,
            Self::Other { status, .. } if status.is_server_error() => ServiceError::InternalError,
            Self::Other { .. } => ServiceError::BadRequest,
        };
        ErrorDetails::Service(service)
    }

    /// The error for a response that left a layer below the handlers without a JSON body.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => Self::BodyTooLarge,
            StatusCode::REQUEST_TIMEOUT => Self::BodyTimeout,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => Self::TooSlow,
            status if status.is_server_error() => Self::Internal,
            status => Self::Other {
                status,
                message: status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_lowercase(),
            },
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
            other => Self::Other {
                status: other.status(),
                message: other.body_text(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The service's own faults and a broken sandbox are the operator's to know about.
        if let Self::Sandbox(SandboxError::Unavailable(_)) = &self {
            tracing::error!(error = %self, "request failed");
        }
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %crate::telemetry::ErrorChain(&self), "request failed");
            Self::Internal.to_string()
        } else {
            self.to_string()
        };
        let retry_after = match &self {
            Self::Sandbox(SandboxError::Busy(_)) | Self::Busy(_) => Some(RETRY_AFTER_BUSY_SECS),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECS),
            _ => None,
        };
        let details = self.into_details();
        let code = OutcomeCode(details.code());
        let body = ErrorBody {
            error: message,
            details,
        };
        let mut response = (status, Extension(code), Json(body)).into_response();
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        response
    }
}
