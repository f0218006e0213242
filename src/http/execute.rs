//! `POST /execute`: extract, validate, run, answer.

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::error::{ApiError, FailedExecution, duration_ms};
use super::extract::AppJson;
use crate::app::AppState;
use crate::protocol::ExecuteResponse;
use crate::sandbox::{Execution, Outcome};
use crate::validate::validate;

pub(super) async fn execute(
    State(state): State<AppState>,
    AppJson(body): AppJson<Value>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let script = validate(script_field(body)?, state.config.limits.script_bytes)?;
    let Execution {
        outcome,
        stdout,
        stderr,
        duration,
    } = state.sandbox.execute(&script).await?;
    match outcome {
        Outcome::Returned(result) => Ok(Json(ExecuteResponse {
            result,
            stdout: stdout.text,
            stderr: stderr.text,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            duration_ms: duration_ms(duration),
        })),
        Outcome::Failed(failure) => Err(ApiError::ScriptFailed(Box::new(FailedExecution {
            failure,
            stdout,
            stderr,
            duration,
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
