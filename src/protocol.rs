//! The service's wire types: what `/execute`, `/health` and `/` take and answer, with their
//! OpenAPI schemas, and the status each error `code` is answered with. Serde and schema derives,
//! the one hand-written deserializer that makes the request's errors precise, and conversions
//! into wire types; no other logic. A script's failure is [`ScriptFailure`] (`failure.rs`),
//! shared with the harness and the sandbox. Nothing here depends on the sandbox or the HTTP
//! layer; `config` only where a wire type is built from it, so a setting can be renamed
//! without changing the API.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::config;
pub use crate::failure::ScriptFailure;
use crate::fields::{self, Strict};

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

/// One event of a streamed `POST /execute` (with `Accept: application/x-ndjson`, one JSON
/// object a line; with `Accept: text/event-stream`, the same object as an event's `data`,
/// named by its `event:` line).
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The harness started: the script's own code runs next. At most once, first.
    Started,
    /// What the script wrote to stdout since the last such event: a few milliseconds' worth,
    /// never split inside a character (bytes that are not UTF-8 are U+FFFD, as in the body).
    Stdout { data: String },
    /// The same, for stderr.
    Stderr { data: String },
    /// Always last, exactly once: the status and the exact JSON body the request would have
    /// been answered with had it not asked for a stream.
    Result {
        status: u16,
        #[schema(value_type = Object)]
        body: Box<RawValue>,
    },
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

/// The errors that are not a script's: bad requests, overload, the service's own faults. Each
/// code has one status ([`ServiceError::status`]); the 5xx ones also have one sentence, their
/// `message` here, which is all their body's `error` says.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, ToSchema, strum::IntoStaticStr, strum::EnumMessage,
)]
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
    /// The body did not arrive in time.
    RequestTimeout,
    /// A request we have no better code for.
    BadRequest,
    /// Too much at once: every sandbox is busy and the queue is full or waited too long, or
    /// too many bodies or connections are arriving.
    #[strum(message = "the service is busy; retry shortly")]
    Busy,
    /// The service is stopping: the request was refused, or stopped when the grace period
    /// ended.
    #[strum(message = "the service is shutting down; retry the request")]
    ShuttingDown,
    /// nsjail or the sandbox Python is missing or broken, or the disk is full.
    #[strum(message = "the sandbox is unavailable; retry shortly")]
    SandboxUnavailable {
        /// Always `unhealthy`, as `GET /health` says.
        status: HealthStatus,
        /// Why, for the operator: only in `GET /health`'s answer (it may name host paths and
        /// nsjail's own words); `POST /execute` says no more than `error`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A fault of the service itself; what went wrong is in its log.
    #[strum(message = "the service failed internally; retry, and report it if it persists")]
    InternalError,
}

impl ServiceError {
    /// The status this code is answered with: the one place it is decided.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::EmptyScript
            | Self::InvalidInput { .. }
            | Self::InvalidFile { .. }
            | Self::TooManyFiles { .. }
            | Self::InvalidReturnFiles
            | Self::InvalidLimit { .. }
            | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::ScriptTooLarge { .. } | Self::BodyTooLarge | Self::FilesTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::ShuttingDown | Self::SandboxUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The whole `error` of a 5xx body: one sentence per code, so no reason, host path or
    /// nsjail line reaches a client (the reason is logged). None for a 4xx, whose message says
    /// what to fix.
    pub fn fixed_message(&self) -> Option<&'static str> {
        if self.status().is_server_error() {
            // Every 5xx code has its sentence (a test checks); the fallback says no more.
            Some(
                strum::EnumMessage::get_message(self)
                    .unwrap_or("the service failed; retry, and report it if it persists"),
            )
        } else {
            None
        }
    }
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

    /// The status the body is answered with: its code's; a script's failure is the caller's,
    /// always 400.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Service(error) => error.status(),
            Self::Script(_) => StatusCode::BAD_REQUEST,
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

/// How strongly scripts are isolated, for `GET /health` and `GET /`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Isolation {
    /// The jail profile executions run in: `strict` or `cloudrun`.
    #[schema(value_type = String, example = "strict")]
    pub profile: &'static str,
    pub limits: LimitsBackend,
    /// What the jail guarantees on this host.
    #[schema(value_type = Vec<String>)]
    pub guarantees: Vec<&'static str>,
    /// What it does not isolate on this host (empty under `strict`).
    #[schema(value_type = Vec<String>)]
    pub not_isolated: Vec<&'static str>,
}

/// What bounds an execution's memory and process count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitsBackend {
    /// A cgroup v1 memory and pids group per execution.
    CgroupV1,
    /// A cgroup v2 group per execution.
    CgroupV2,
    /// No writable cgroups: address-space and process-count rlimits only.
    Rlimits,
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
    pub limits: ServiceLimits,
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

/// One installed distribution, as `pip list` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Package {
    /// The distribution's name as its metadata spells it, e.g. `python-dateutil`.
    #[schema(example = "numpy")]
    pub name: String,
    #[schema(example = "2.4.6")]
    pub version: String,
}

/// What one execution may use and send, as `GET /` lists it. A request's own `limits` may
/// lower `time_limit_ms`, `memory_bytes` and `output_bytes`, never raise them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ServiceLimits {
    /// The largest `script`, in bytes of UTF-8; a longer one is refused with 413
    /// `script_too_large`.
    pub script_bytes: usize,
    /// The wall time an execution may run, in milliseconds (400 `time_limit_exceeded` past
    /// it), and the most `limits.time_ms` may ask for.
    pub time_limit_ms: u64,
    /// The bytes of stdout, and of stderr, an answer carries; the rest is dropped and
    /// `stdout_truncated` or `stderr_truncated` says so. The most `limits.output_bytes` may ask
    /// for.
    pub output_bytes: usize,
    /// The largest JSON encoding of `main()`'s return value, in bytes (400 `result_too_large`
    /// past it).
    pub result_bytes: usize,
    /// The memory an execution may use, in bytes (400 `memory_limit_exceeded` past it), and
    /// the most `limits.memory_bytes` may ask for.
    pub memory_bytes: u64,
    /// The least `limits.memory_bytes` may ask for, in bytes: with less, Python cannot start
    /// with numpy.
    pub min_memory_bytes: u64,
    /// The processes and threads an execution may have at once.
    pub processes: u64,
    /// The CPU time an execution may use, all its threads together, in seconds (400
    /// `cpu_limit_exceeded` past it).
    pub cpu_secs: u64,
    /// The size of an execution's private `/tmp`, which holds its working directory and the
    /// `files` sent with it, in bytes (under the `strict` profile).
    pub tmp_bytes: u64,
    /// The largest file a script may write, in bytes.
    pub file_bytes: u64,
    /// The file descriptors each of a script's processes may hold open.
    pub open_files: u64,
    /// The most entries `files` may have (400 `too_many_files` past it).
    pub input_files: usize,
    /// The most bytes `files` may hold in all, once decoded (413 `files_too_large` past it).
    pub input_bytes: u64,
    /// The most files an answer sends back; past it `files_truncated` is true.
    pub output_files: usize,
    /// The most bytes the files sent back hold in all; past it `files_truncated` is true.
    pub output_files_bytes: u64,
}

impl From<&config::Limits> for ServiceLimits {
    /// Each setting named, none left out by `..`: a new one must be published here, or
    /// deliberately not.
    fn from(limits: &config::Limits) -> Self {
        let &config::Limits {
            script_bytes,
            time_limit_ms,
            output_bytes,
            result_bytes,
            memory_bytes,
            processes,
            cpu_secs,
            tmp_bytes,
            file_bytes,
            open_files,
            input_files,
            input_bytes,
            output_files,
            output_files_bytes,
        } = limits;
        Self {
            script_bytes,
            time_limit_ms,
            output_bytes,
            result_bytes,
            memory_bytes,
            min_memory_bytes: limits.memory_floor(),
            processes,
            cpu_secs,
            tmp_bytes,
            file_bytes,
            open_files,
            input_files,
            input_bytes,
            output_files,
            output_files_bytes,
        }
    }
}

/// Whole milliseconds, saturating: the unit of every duration the service reports, in its
/// answers (`duration_ms`) and in its logs.
pub fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_error_has_its_own_sentence_and_no_client_error_has_one() {
        let unavailable = ServiceError::SandboxUnavailable {
            status: HealthStatus::Unhealthy,
            reason: Some("cannot run nsjail at /opt/pyexec/bin/nsjail".to_owned()),
        };
        for code in [
            ServiceError::Busy,
            ServiceError::ShuttingDown,
            unavailable,
            ServiceError::InternalError,
        ] {
            assert!(code.status().is_server_error(), "{code:?}");
            let sentence = strum::EnumMessage::get_message(&code);
            assert_eq!(code.fixed_message(), sentence, "{code:?}");
            assert!(sentence.is_some(), "{code:?}");
        }
        for code in [
            ServiceError::InvalidJson,
            ServiceError::BodyTooLarge,
            ServiceError::RequestTimeout,
        ] {
            assert!(code.status().is_client_error(), "{code:?}");
            assert_eq!(code.fixed_message(), None, "{code:?}");
        }
    }

    #[test]
    fn a_health_reason_is_in_the_body_only_when_given() {
        let body = |reason: Option<&str>| {
            serde_json::to_value(ServiceError::SandboxUnavailable {
                status: HealthStatus::Unhealthy,
                reason: reason.map(str::to_owned),
            })
            .unwrap()
        };
        assert_eq!(
            body(None),
            serde_json::json!({"code": "sandbox_unavailable", "status": "unhealthy"})
        );
        assert_eq!(body(Some("why"))["reason"], "why");
    }

    #[test]
    fn get_s_limits_keep_the_names_of_the_settings_and_add_the_memory_floor() {
        let limits = config::Limits::default();
        let published = serde_json::to_value(ServiceLimits::from(&limits)).unwrap();
        assert_eq!(published["script_bytes"], limits.script_bytes);
        assert_eq!(published["time_limit_ms"], limits.time_limit_ms);
        assert_eq!(published["min_memory_bytes"], config::MIN_MEMORY_BYTES);
        assert_eq!(published.as_object().unwrap().len(), 15);
    }
}
