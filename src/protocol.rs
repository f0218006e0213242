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
use crate::fields::{self, Strict};
pub use crate::sandbox::{Isolation, Package};

/// The body of `POST /execute`: a JSON object with no fields but these. Only `script` is
/// required; without the others a request runs `main()` as it always did.
#[derive(Debug, ToSchema)]
// For the schema only (`additionalProperties: false`): the deserializer below is written by
// hand and refuses unknown fields itself.
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Python source defining a top-level `main()`; at most `limits.script_bytes` bytes of
    /// UTF-8. With `input`, `main` must take one positional parameter.
    #[schema(example = "def main():\n    print('hi')\n    return {'answer': 42}\n")]
    pub script: String,
    /// Any JSON value, nested at most 100 arrays and objects deep; when present (`null`
    /// included) `main` is called as `main(input)`, with the value as Python's `json` reads it.
    #[schema(value_type = Option<Object>)]
    pub input: Option<Box<RawValue>>,
    /// Files placed in the script's working directory before it runs, read-write for it: at
    /// most `limits.input_files`, `limits.input_bytes` in all once decoded.
    pub files: Vec<InputFile>,
    /// `true` to get back the regular files the script created or changed in its working
    /// directory, or glob patterns (Python's `fnmatch`, `*` crossing `/`) for the files to
    /// send back, unchanged input files included. Default `false`.
    #[schema(value_type = Object, example = json!(["*.csv"]))]
    pub return_files: ReturnFiles,
    /// Limits for this execution, each at most the service's own (`GET /`'s `limits`).
    pub limits: Option<RequestLimits>,
    /// `true` keeps results to what Python's `json` encodes by itself: no mapping of numpy,
    /// pandas, dates or `Decimal`, and NaN or Infinity is an error rather than `null`.
    pub strict_result: bool,
}

/// A file to place in the working directory.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Relative to the working directory, `/` between names: no `..`, no absolute path, at
    /// most 16 directories deep, names of at most 255 bytes.
    #[schema(example = "data/sales.csv")]
    pub path: String,
    /// The file's bytes: text as is, or base64 (standard alphabet, padded).
    pub content: String,
    #[serde(default)]
    pub encoding: FileEncoding,
}

/// How a file's `content` holds its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum FileEncoding {
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "base64")]
    Base64,
}

/// Which files come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ReturnFiles {
    /// `true`: every file created or changed; `false`: none.
    All(bool),
    /// Every file matching one of these patterns.
    Matching(Vec<String>),
}

impl Default for ReturnFiles {
    fn default() -> Self {
        Self::All(false)
    }
}

/// An execution's own limits; each left out keeps the service's.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    /// Wall time, in milliseconds.
    pub time_ms: Option<u64>,
    /// Memory, in bytes (at least 64 MiB).
    pub memory_bytes: Option<u64>,
    /// stdout and stderr kept, each, in bytes.
    pub output_bytes: Option<u64>,
}

/// The limits an execution ran under, in answers to requests that set `limits`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct AppliedLimits {
    pub time_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
}

/// The fields of [`ExecuteRequest`], in the order errors list them.
const REQUEST_FIELDS: &[&str] = &[
    "script",
    "input",
    "files",
    "return_files",
    "limits",
    "strict_result",
];

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
                let mut input = None;
                let mut files = None;
                let mut return_files = None;
                let mut limits = None;
                let mut strict_result = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "script" => once(&mut script, "script", || {
                            map.next_value::<PythonSource>().map(|source| source.0)
                        })?,
                        "input" => once(&mut input, "input", || map.next_value())?,
                        "files" => once(&mut files, "files", || {
                            map.next_value::<Vec<Strict<InputFile>>>()
                                .map(|files| files.into_iter().map(|file| file.0).collect())
                        })?,
                        "return_files" => once(&mut return_files, "return_files", || {
                            map.next_value::<ReturnFilesField>().map(|field| field.0)
                        })?,
                        "limits" => once(&mut limits, "limits", || {
                            map.next_value::<Strict<RequestLimits>>()
                                .map(|limits| limits.0)
                        })?,
                        "strict_result" => {
                            once(&mut strict_result, "strict_result", || map.next_value())?;
                        }
                        // Refused before its value is read: a misspelt field would otherwise
                        // be silently ignored, and a deep value walked for nothing.
                        other => return Err(fields::unknown(other, REQUEST_FIELDS)),
                    }
                }
                let script = script.ok_or_else(|| de::Error::missing_field("script"))?;
                Ok(ExecuteRequest {
                    script,
                    input,
                    files: files.unwrap_or_default(),
                    return_files: return_files.unwrap_or_default(),
                    limits,
                    strict_result: strict_result.unwrap_or(false),
                })
            }
        }
        deserializer.deserialize_map(Body)
    }
}

/// Reads a field's value into `slot`, refusing a second one.
fn once<T, E: de::Error>(
    slot: &mut Option<T>,
    name: &'static str,
    read: impl FnOnce() -> Result<T, E>,
) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(read()?);
    Ok(())
}

/// `return_files`, with an error that names its two forms.
struct ReturnFilesField(ReturnFiles);

impl<'de> Deserialize<'de> for ReturnFilesField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Wanted;
        impl<'de> Visitor<'de> for Wanted {
            type Value = ReturnFilesField;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a list of glob patterns such as [\"*.csv\"]")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(ReturnFilesField(ReturnFiles::All(value)))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut patterns = Vec::new();
                while let Some(pattern) = seq.next_element::<String>()? {
                    patterns.push(pattern);
                }
                Ok(ReturnFilesField(ReturnFiles::Matching(patterns)))
            }
        }
        deserializer.deserialize_any(Wanted)
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
    /// Values Python's `json` cannot carry are mapped as README's table says (numpy scalars
    /// and arrays, a `DataFrame` as a list of row objects, `Series`, `Index`, dates and times
    /// as ISO 8601, durations as seconds, `Decimal` as a string; NaN, `NaT`, `pd.NA` and ±Infinity
    /// as `null`, listed in `nulls`), unless the request set `strict_result`.
    #[schema(value_type = Object)]
    pub result: Box<RawValue>,
    #[serde(flatten)]
    pub output: ScriptOutput,
    /// Where the mapping made a missing or non-finite value `null`; absent when nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nulls: Option<Nulls>,
    /// With `return_files`: the files, sorted by path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<OutputFile>>,
    /// With `return_files`: some files were left out (over `limits.output_files` or
    /// `limits.output_files_bytes`), or `skipped_files` entries were (over its cap of 64, or
    /// not a path the working directory can hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_truncated: Option<bool>,
    /// Entries that were not read: links, FIFOs, sockets, devices, files that changed while
    /// being read, names the service refuses (at most 64). A name that is not UTF-8 is shown
    /// with U+FFFD, so two entries may read the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<SkippedFile>,
    /// The limits the execution ran under, when the request set `limits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<AppliedLimits>,
}

/// Where `null`s stand for NaN, `NaT`, `pd.NA` or ±Infinity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nulls {
    /// Every `null` the mapping made, also those past the first 100.
    pub count: u64,
    /// The first 100, as `result[3]['price']`.
    pub paths: Vec<String>,
}

/// A file the script left in its working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// UTF-8 text when the bytes are text without control characters (but tab, CR, LF), else
    /// base64.
    pub content: String,
    pub encoding: FileEncoding,
}

/// An entry of the working directory that was not sent back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkippedFile {
    /// Relative to the working directory; it holds to the path rules of `files` but for the
    /// one its `reason` names.
    pub path: String,
    pub reason: SkipReason,
}

/// Why an entry was not sent back: `symlink` (never followed), `not_a_regular_file` (a FIFO,
/// socket or device), `changed_while_reading`, `unreadable`, `too_deep` (a directory deeper
/// than 16), `name_not_utf8` (a name that is not UTF-8, shown with U+FFFD), `name_refused`
/// (a control character or a backslash in the path), `path_too_long` (over 1024 bytes),
/// `duplicate_path` (the sandbox reported the path twice; every copy is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Symlink,
    NotARegularFile,
    ChangedWhileReading,
    Unreadable,
    TooDeep,
    NameNotUtf8,
    NameRefused,
    PathTooLong,
    DuplicatePath,
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
    /// `input` nests arrays and objects deeper than the service reads.
    InvalidInput {
        /// How deep it nests.
        depth: usize,
        limit_depth: usize,
    },
    ScriptTooLarge {
        script_bytes: usize,
        limit_bytes: usize,
    },
    BodyTooLarge,
    /// An entry of `files` breaks a rule (its path, or its base64); `error` names it.
    InvalidFile {
        /// Its place in `files`.
        index: usize,
    },
    TooManyFiles {
        files: usize,
        limit_files: usize,
    },
    /// `files` hold more bytes, decoded, than `limits.input_bytes`.
    FilesTooLarge {
        files_bytes: u64,
        limit_bytes: u64,
    },
    /// `return_files` is neither a boolean nor 1 to 16 usable glob patterns.
    InvalidReturnFiles,
    /// One of `limits` is out of range.
    InvalidLimit {
        #[schema(value_type = String)]
        name: &'static str,
        /// The service's own limit, the most a request may ask for.
        maximum: u64,
    },
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
    /// `warm` (executions are forked from a pre-imported zygote) or `cold` (a jail started
    /// for each).
    #[schema(value_type = String, example = "warm")]
    pub path: &'static str,
    /// Why executions run cold, when they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_reason: Option<String>,
    /// Stronger profiles that were tried on this host and did not work, with why (empty
    /// when the strongest works or only one was configured).
    pub failed_profiles: Vec<FailedProfile>,
}

/// A profile that did not work on this host.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedProfile {
    #[schema(value_type = String, example = "strict")]
    pub profile: &'static str,
    pub reason: String,
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
    /// The sandbox Python's version (`major.minor.micro`); null until the sandbox has started
    /// and answered.
    #[schema(example = "3.11.2")]
    pub python: Option<String>,
    /// Every distribution a script can import, as installed in the sandbox, sorted by name;
    /// read once at start-up, empty until then.
    pub packages: Vec<Package>,
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
