//! `POST /execute`: extract, validate, run, answer.

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::{ApiError, FailedExecution, Usage, duration_ms};
use super::extract::AppJson;
use crate::app::AppState;
use crate::protocol::{ErrorBody, ExecuteRequest, ExecuteResponse};
use crate::sandbox::{Execution, Outcome};
use crate::validate::validate;

/// Runs a script's `main()` in a fresh sandbox.
#[utoipa::path(
    post,
    path = "/execute",
    request_body(content = ExecuteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "`main()` returned; its value and what the script printed", body = ExecuteResponse),
        (status = 400, description = "Invalid JSON or request, or the script failed (see `code`)", body = ErrorBody),
        (status = 408, description = "The body was not sent in time", body = ErrorBody),
        (status = 413, description = "The script or the body is too large", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "Busy, shutting down, or the sandbox is unavailable", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn execute(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    // Admitted before the body is read: when every sandbox and queue place is taken the
    // answer is 503 at once, and no more bodies are held than there are places.
    let ticket = state.sandbox.admit()?;
    let AppJson(body) = AppJson::<Value>::from_request(request, &state).await?;
    let script = validate(script_field(body)?, state.config.limits.script_bytes)?;
    let Execution {
        outcome,
        stdout,
        stderr,
        duration,
        memory_peak_bytes,
    } = state.sandbox.execute(ticket, &script).await?;
    let usage = Usage {
        duration,
        memory_peak_bytes,
    };
    match outcome {
        Outcome::Returned(result) => {
            let mut response = Json(ExecuteResponse {
                result,
                stdout: stdout.text,
                stderr: stderr.text,
                stdout_truncated: stdout.truncated,
                stderr_truncated: stderr.truncated,
                duration_ms: duration_ms(duration),
            })
            .into_response();
            response.extensions_mut().insert(usage.logged("ok"));
            Ok(response)
        }
        Outcome::Failed(failure) => Err(ApiError::ScriptFailed(Box::new(FailedExecution {
            failure,
            stdout,
            stderr,
            usage,
        }))),
    }
}

/// The `script` string of a `{"script": "..."}` body, with an error that says what to fix.
fn script_field(body: Value) -> Result<String, ApiError> {
    let Value::Object(mut fields) = body else {
        return Err(ApiError::InvalidRequest(format!(
            "the body must be a JSON object like {{\"script\": \"def main(): ...\"}}, not {}",
            json_type(&body)
        )));
    };
    match fields.remove("script") {
        Some(Value::String(script)) => Ok(script),
        None => Err(ApiError::InvalidRequest(
            "the body has no \"script\" field: send {\"script\": \"def main(): ...\"}".to_owned(),
        )),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "the \"script\" field must be a string of Python source, not {}",
            json_type(&other)
        ))),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
