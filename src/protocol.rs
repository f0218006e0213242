//! The service's wire types: what `/execute`, `/health` and `/` answer. Serde only; no logic.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Limits;
pub use crate::sandbox::Isolation;

/// `200` from `POST /execute`: `main()`'s return value and what the script printed.
#[derive(Debug, Serialize)]
pub struct ExecuteResponse {
    /// Exactly the JSON the harness encoded (big integers and floats are not re-encoded).
    pub result: Box<RawValue>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// Every non-2xx body: a message a person can act on, a stable code for programs, and
/// details that depend on the code.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: &'static str,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// `200` from `GET /health`.
#[derive(Debug, Serialize)]
pub struct HealthResponse {
    pub status: &'static str,
    pub profile: &'static str,
    pub isolation: Isolation,
}

/// `GET /`: what this service offers.
#[derive(Debug, Serialize)]
pub struct InfoResponse {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub endpoints: Vec<Endpoint>,
    pub limits: Limits,
    pub isolation: Isolation,
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub description: &'static str,
}
