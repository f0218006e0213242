//! The service's wire types: what `/execute`, `/health` and `/` take and answer, with their
//! OpenAPI schemas. Serde and schema derives only; no logic.

use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::config::Limits;
pub use crate::sandbox::Isolation;

/// The body of `POST /execute`. Parsed by hand (see `http/execute.rs`) for precise errors;
/// this type documents it.
#[derive(Debug, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the request body; the handler reads it as JSON"
)]
pub struct ExecuteRequest {
    /// Python source defining a top-level `main()` that takes no arguments; at most
    /// `limits.script_bytes` bytes of UTF-8.
    #[schema(example = "def main():\n    print('hi')\n    return {'answer': 42}\n")]
    pub script: String,
}

/// `200` from `POST /execute`: `main()`'s return value and what the script printed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    /// Exactly the JSON the harness encoded (big integers and floats are not re-encoded).
    #[schema(value_type = Value)]
    pub result: Box<RawValue>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// Every non-2xx body: a message a person can act on, a stable code for programs, and
/// details that depend on the code (see README.md's table of codes).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[schema(value_type = String)]
    pub code: &'static str,
    #[serde(flatten)]
    #[schema(ignore)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// `200` from `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    #[schema(value_type = String)]
    pub status: &'static str,
    #[schema(value_type = String)]
    pub profile: &'static str,
    pub isolation: Isolation,
}

/// `GET /`: what this service offers.
#[derive(Debug, Serialize, ToSchema)]
pub struct InfoResponse {
    #[schema(value_type = String)]
    pub name: &'static str,
    #[schema(value_type = String)]
    pub version: &'static str,
    #[schema(value_type = String)]
    pub description: &'static str,
    pub endpoints: Vec<Endpoint>,
    pub limits: Limits,
    pub isolation: Isolation,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Endpoint {
    #[schema(value_type = String)]
    pub method: &'static str,
    #[schema(value_type = String)]
    pub path: &'static str,
    #[schema(value_type = String)]
    pub description: &'static str,
}
