//! The service's wire types: what `/execute`, `/health` and `/` take and answer, with their
//! OpenAPI schemas. Serde and schema derives only, and the one hand-written deserializer that
//! makes the request's errors precise; no logic. A script's failure is
//! [`ScriptFailure`], shared with the harness and the sandbox.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::config::Limits;
pub use crate::failure::ScriptFailure;
pub use crate::sandbox::Isolation;

/// The body of `POST /execute`: a JSON object (fields other than these are ignored).
#[derive(Debug, ToSchema)]
pub struct ExecuteRequest {
    /// Python source defining a top-level `main()` that takes no arguments; at most
    /// `limits.script_bytes` bytes of UTF-8.
    #[schema(example = "def main():\n    print('hi')\n    return {'answer': 42}\n")]
    pub script: String,
}

/// By hand rather than derived: a derived struct would also accept `["def main(): ..."]`, and
/// these errors name what was expected (serde adds the line and column).
impl<'de> Deserialize<'de> for ExecuteRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Body;
        impl<'de> Visitor<'de> for Body {
            type Value = ExecuteRequest;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object like {\"script\": \"def main(): ...\"}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExecuteRequest, A::Error> {
                let mut script = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "script" if script.is_some() => {
                            return Err(de::Error::duplicate_field("script"));
                        }
                        "script" => script = Some(map.next_value::<PythonSource>()?.0),
                        _ => drop(map.next_value::<de::IgnoredAny>()?),
                    }
                }
                let script = script.ok_or_else(|| de::Error::missing_field("script"))?;
                Ok(ExecuteRequest { script })
            }
        }
        deserializer.deserialize_map(Body)
    }
}

/// A string, with an error that says a string of Python source was expected.
struct PythonSource(String);

impl<'de> Deserialize<'de> for PythonSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Source;
        impl Visitor<'_> for Source {
            type Value = PythonSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string of Python source")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<PythonSource, E> {
                Ok(PythonSource(value.to_owned()))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<PythonSource, E> {
                Ok(PythonSource(value))
            }
        }
        deserializer.deserialize_string(Source)
    }
}

/// What a script printed and how long it ran: part of every answer to `POST /execute`, the
/// failures included.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ScriptOutput {
    /// Everything the script, its C extensions and its subprocesses wrote to stdout, exactly;
    /// invalid UTF-8 becomes U+FFFD.
    pub stdout: String,
    pub stderr: String,
    /// More was written than `limits.output_bytes`; the rest was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Wall time of the sandbox, in milliseconds.
    pub duration_ms: u64,
}

/// `200` from `POST /execute`: `main()`'s return value and what the script printed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    /// Exactly the JSON the harness encoded (big integers and floats are not re-encoded).
    #[schema(value_type = Object)]
    pub result: Box<RawValue>,
    #[serde(flatten)]
    pub output: ScriptOutput,
}

/// Every non-2xx body: a message a person can act on (`error`), a stable `code` for programs,
/// and the details that code carries (see README.md's table of codes).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(flatten)]
    pub details: ErrorDetails,
}

/// The `code` of an error body and its details.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ErrorDetails {
    /// The request or the service failed; the script did not run to an end.
    Service(ServiceError),
    /// The script ran and failed, with what it printed.
    Script(Box<FailedScript>),
}

/// A script's failure and what it printed before failing.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedScript {
    #[serde(flatten)]
    pub failure: ScriptFailure,
    #[serde(flatten)]
    pub output: ScriptOutput,
}

/// The errors that are not a script's: bad requests, overload, the service's own faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema, strum::IntoStaticStr)]
#[serde(tag = "code", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ServiceError {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but not `{"script": "..."}`.
    InvalidRequest,
    EmptyScript,
    ScriptTooLarge {
        script_bytes: usize,
        limit_bytes: usize,
    },
    BodyTooLarge,
    UnsupportedMediaType,
    NotFound,
    MethodNotAllowed,
    /// The body did not arrive in time, or the request took too long altogether.
    RequestTimeout,
    /// A request we have no better code for.
    BadRequest,
    /// Every sandbox is busy and the queue is full or waited too long.
    Busy,
    ShuttingDown,
    /// nsjail or the sandbox Python is missing or broken, or the disk is full.
    SandboxUnavailable {
        /// Always `unhealthy`, as `GET /health` says.
        status: HealthStatus,
    },
    InternalError,
}

/// Whether scripts can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
}

impl ErrorDetails {
    /// The body's `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Service(error) => error.into(),
            Self::Script(failed) => failed.failure.code(),
        }
    }
}

/// `200` from `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// Always `healthy` (an unhealthy sandbox answers 503).
    pub status: HealthStatus,
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
