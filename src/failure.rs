//! Every way a script can fail, as one type from end to end: the harness sends it (a JSON
//! object tagged by `code`, see `src/harness/harness.py`), the sandbox classifies what it
//! observed itself into it, and the HTTP layer flattens it into the error body, so
//! `/openapi.json` documents every field. The harness sends facts (types, paths, numbers);
//! the words a person reads are made here, in [`fmt::Display`], and nowhere else.
//!
//! Owns no I/O and no policy: which side may report which failure is
//! [`ScriptFailure::reportable_by_harness`], and what wins when they disagree is decided in
//! `sandbox/outcome.rs`.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a script did not return a value. Each is the caller's to fix, so each answers 400.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, strum::IntoStaticStr)]
#[serde(tag = "code", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum ScriptFailure {
    /// The script does not compile.
    SyntaxError {
        /// The compiler's own words, e.g. `invalid syntax`.
        message: String,
        line: Option<u64>,
        column: Option<u64>,
        /// The offending line of source.
        text: Option<String>,
    },
    /// There is no callable top-level `main`.
    NoMain {
        /// The type of the `main` that is not a function; null when there is none at all.
        main_type: Option<String>,
    },
    /// `main` has parameters without defaults beyond the one `input` fills.
    MainRequiresArguments {
        parameters: Vec<String>,
        /// Whether the request had `input` (so `main` was to be called as `main(input)`).
        #[serde(default)]
        input_given: bool,
    },
    /// The request has `input`, but `main` takes no positional parameter to receive it.
    MainTakesNoInput,
    /// The script raised while loading or in `main()`.
    ScriptException {
        phase: Phase,
        exception: ExceptionInfo,
    },
    /// `main()` returned something JSON cannot carry.
    ResultNotSerializable {
        /// The type of the offending value (or key).
        #[serde(rename = "type")]
        type_name: String,
        /// Where it is, in Python notation from `result`, e.g. `result['rows'][3]`.
        path: String,
        problem: Unserializable,
    },
    /// The encoded result is over the result limit.
    ResultTooLarge {
        result_bytes: u64,
        limit_bytes: u64,
    },
    /// The script left before `main()` returned.
    ScriptExited {
        /// `sys.exit`'s argument (a number, a string or null), or the process's exit status.
        #[schema(value_type = Object)]
        exit_code: serde_json::Value,
        via: ExitVia,
    },
    /// A signal ended the script (a crash in a C extension, a kill from outside).
    ScriptCrashed {
        signal: i32,
        signal_name: String,
    },
    TimeLimitExceeded {
        time_limit_ms: u64,
    },
    MemoryLimitExceeded {
        memory_limit_bytes: u64,
    },
    CpuLimitExceeded {
        cpu_limit_secs: u64,
    },
    /// What the harness sent could not be understood (the script wrote to its descriptor).
    ResultUnreadable {
        problem: String,
    },
}

/// When the exception was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// While the module was executed, before `main()` was called.
    Load,
    Main,
}

/// An exception as the script would see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExceptionInfo {
    /// Qualified name of its class, e.g. `KeyError` or `numpy.linalg.LinAlgError`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `str()` of the exception: lone surrogates become U+FFFD; cut at 16 Ki characters.
    pub message: String,
    pub message_truncated: bool,
    /// Python's traceback, without the harness's own frames; cut at 64 Ki characters.
    pub traceback: String,
    pub traceback_truncated: bool,
    /// The sandbox limit behind it, when the harness could tell (an `errno` that names one).
    pub limit: Option<ReachedLimit>,
}

/// A limit a script ran into, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReachedLimit {
    pub name: LimitName,
    pub value: u64,
}

/// The limits an exception can be traced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitName {
    /// Processes and threads (`EAGAIN` from fork or thread start).
    Processes,
    /// The largest file (`EFBIG`).
    FileBytes,
    /// The size of `/tmp` (`ENOSPC`).
    TmpBytes,
    /// Open descriptors (`EMFILE`).
    OpenFiles,
}

/// What about the value JSON cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unserializable {
    /// A value of a type JSON has no form for.
    Type,
    /// A dict key of a type JSON has no form for.
    Key,
    Nan,
    Infinity,
    NegativeInfinity,
    /// A container that contains itself.
    Circular,
    TooDeep,
    /// Two `DataFrame` columns or `Series` labels with the same name: JSON keys must differ.
    DuplicateKey,
}

/// How the script left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitVia {
    /// It raised `SystemExit` (`sys.exit()`), reported by the harness.
    SysExit,
    /// The process exited (`os._exit()`, a fatal interpreter error), as the service saw it.
    ExitStatus,
}

impl ScriptFailure {
    /// The stable code clients switch on (the serde tag).
    pub fn code(&self) -> &'static str {
        self.into()
    }

    /// A crash by `signal`, named.
    pub fn crashed(signal: i32) -> Self {
        Self::ScriptCrashed {
            signal,
            signal_name: signal_name(signal).to_owned(),
        }
    }

    /// Whether the harness may report this. The rest are what the service observes itself
    /// (its deadline, a signal, the process's exit), and a frame claiming one is a forgery.
    pub fn reportable_by_harness(&self) -> bool {
        match self {
            Self::SyntaxError { .. }
            | Self::NoMain { .. }
            | Self::MainRequiresArguments { .. }
            | Self::MainTakesNoInput
            | Self::ScriptException { .. }
            | Self::ResultNotSerializable { .. }
            | Self::ResultTooLarge { .. }
            | Self::MemoryLimitExceeded { .. }
            | Self::CpuLimitExceeded { .. } => true,
            Self::ScriptExited { via, .. } => *via == ExitVia::SysExit,
            Self::ScriptCrashed { .. }
            | Self::TimeLimitExceeded { .. }
            | Self::ResultUnreadable { .. } => false,
        }
    }
}

impl fmt::Display for ScriptFailure {
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per failure: the words, read top to bottom"
    )]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SyntaxError {
                message,
                line,
                column,
                text,
            } => {
                f.write_str("syntax error")?;
                match (line, column) {
                    (Some(line), Some(column)) => write!(f, " on line {line}, column {column}")?,
                    (Some(line), None) => write!(f, " on line {line}")?,
                    _ => {}
                }
                write!(f, ": {message}")?;
                text.as_ref()
                    .map_or(Ok(()), |text| write!(f, ": {}", text.trim()))
            }
            Self::NoMain { main_type: None } => {
                f.write_str("the script does not define a top-level function main()")
            }
            Self::NoMain {
                main_type: Some(found),
            } => write!(
                f,
                "main is not a function (it is of type {found}): define def main(): ..."
            ),
            Self::MainRequiresArguments {
                parameters,
                input_given: false,
            } => write!(
                f,
                "main() is called with no arguments, but it requires: {} \
                 (send \"input\" to have it called as main(input))",
                parameters.join(", ")
            ),
            Self::MainRequiresArguments {
                parameters,
                input_given: true,
            } => write!(
                f,
                "main() is called as main(input), but it also requires: {}",
                parameters.join(", ")
            ),
            Self::MainTakesNoInput => f.write_str(
                "the request has \"input\", so main() is called as main(input), but it takes no \
                 parameters: define def main(input): ... or leave \"input\" out",
            ),
            Self::ScriptException { phase, exception } => {
                match phase {
                    Phase::Load => f.write_str(
                        "the script raised, while loading and before main() was called,",
                    )?,
                    Phase::Main => f.write_str("main() raised")?,
                }
                write!(f, " {}: {}", exception.type_name, exception.message)?;
                match exception.limit {
                    Some(limit) => write!(f, " ({limit})"),
                    None => Ok(()),
                }
            }
            Self::ResultNotSerializable {
                type_name,
                path,
                problem,
            } => {
                f.write_str("main() returned a value that is not JSON-serializable: ")?;
                unserializable(f, type_name, path, *problem)
            }
            Self::ResultTooLarge {
                result_bytes,
                limit_bytes,
            } => write!(
                f,
                "main() returned a result of {result_bytes} bytes as JSON; the limit is {limit_bytes} bytes"
            ),
            Self::ScriptExited {
                exit_code,
                via: ExitVia::SysExit,
            } => match exit_code {
                serde_json::Value::Null => {
                    f.write_str("the script called sys.exit() before main() returned")
                }
                code => write!(
                    f,
                    "the script called sys.exit({code}) before main() returned"
                ),
            },
            Self::ScriptExited {
                exit_code,
                via: ExitVia::ExitStatus,
            } => write!(
                f,
                "the script exited with status {exit_code} before main() returned \
                 (os._exit or a fatal interpreter error; see stderr)"
            ),
            Self::ScriptCrashed {
                signal,
                signal_name,
            } => write!(
                f,
                "the script was stopped by signal {signal} ({signal_name}) before main() returned; see stderr"
            ),
            Self::TimeLimitExceeded { time_limit_ms } => {
                f.write_str("the script exceeded the time limit of ")?;
                if time_limit_ms.is_multiple_of(1000) {
                    write!(f, "{} s", time_limit_ms / 1000)?;
                } else {
                    write!(f, "{time_limit_ms} ms")?;
                }
                f.write_str(" and was stopped")
            }
            Self::MemoryLimitExceeded { memory_limit_bytes } => write!(
                f,
                "the script exceeded the memory limit of {} MiB",
                memory_limit_bytes >> 20
            ),
            Self::CpuLimitExceeded { cpu_limit_secs } => write!(
                f,
                "the script exceeded the CPU time limit of {cpu_limit_secs} s and was stopped"
            ),
            Self::ResultUnreadable { problem } => write!(
                f,
                "the script's result could not be read ({problem}); do not write to file descriptor 3"
            ),
        }
    }
}

/// Where the value is and what about it JSON cannot carry.
fn unserializable(
    f: &mut fmt::Formatter<'_>,
    type_name: &str,
    path: &str,
    problem: Unserializable,
) -> fmt::Result {
    const NOT_JSON: &str =
        "NaN and Infinity are not valid JSON (without \"strict_result\" they come back as null)";
    match problem {
        Unserializable::Type => {
            write!(f, "{path} is {} {type_name}", article(type_name))?;
            if type_name.starts_with("numpy.") || type_name.starts_with("pandas.") {
                f.write_str("; convert it first, e.g. with .tolist() or .to_dict()")?;
            }
            Ok(())
        }
        Unserializable::Key => write!(
            f,
            "a key of {path} is {} {type_name} (keys must be str, int, float, bool or None)",
            article(type_name)
        ),
        Unserializable::Nan => write!(f, "{path} is NaN; {NOT_JSON}"),
        Unserializable::Infinity => write!(f, "{path} is Infinity; {NOT_JSON}"),
        Unserializable::NegativeInfinity => write!(f, "{path} is -Infinity; {NOT_JSON}"),
        Unserializable::Circular => write!(f, "{path} contains itself (a circular reference)"),
        Unserializable::TooDeep => write!(f, "{path} is nested too deeply to encode"),
        Unserializable::DuplicateKey => write!(
            f,
            "{path} names two columns or labels; JSON keys must be unique, so rename one"
        ),
    }
}

impl fmt::Display for ReachedLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value;
        match self.name {
            LimitName::Processes => {
                write!(f, "the limit of {value} processes and threads was reached")
            }
            LimitName::FileBytes => write!(f, "the file size limit of {value} bytes was reached"),
            LimitName::TmpBytes => {
                write!(f, "the disk is full: the /tmp size limit is {value} bytes")
            }
            LimitName::OpenFiles => write!(f, "the limit of {value} open files was reached"),
        }
    }
}

fn article(noun: &str) -> &'static str {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    }
}

/// The conventional name of a signal, for people.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_code_is_the_serde_tag() {
        let failures = [
            ScriptFailure::crashed(11),
            ScriptFailure::NoMain { main_type: None },
            ScriptFailure::TimeLimitExceeded { time_limit_ms: 1 },
            ScriptFailure::ResultUnreadable {
                problem: String::new(),
            },
        ];
        for failure in failures {
            let value = serde_json::to_value(&failure).unwrap();
            assert_eq!(value["code"], failure.code(), "{value}");
        }
    }

    #[test]
    fn unknown_fields_and_codes_are_refused() {
        let extra = json!({"code": "no_main", "main_type": null, "extra": 1});
        assert!(serde_json::from_value::<ScriptFailure>(extra).is_err());
        let unknown = json!({"code": "escaped"});
        assert!(serde_json::from_value::<ScriptFailure>(unknown).is_err());
    }

    #[test]
    fn words_come_from_the_facts() {
        let failure = ScriptFailure::ResultNotSerializable {
            type_name: "numpy.ndarray".to_owned(),
            path: "result['a']".to_owned(),
            problem: Unserializable::Type,
        };
        assert_eq!(
            failure.to_string(),
            "main() returned a value that is not JSON-serializable: result['a'] is a \
             numpy.ndarray; convert it first, e.g. with .tolist() or .to_dict()"
        );
        let failure = ScriptFailure::ScriptException {
            phase: Phase::Main,
            exception: ExceptionInfo {
                type_name: "BlockingIOError".to_owned(),
                message: "[Errno 11] Resource temporarily unavailable".to_owned(),
                message_truncated: false,
                traceback: String::new(),
                traceback_truncated: false,
                limit: Some(ReachedLimit {
                    name: LimitName::Processes,
                    value: 64,
                }),
            },
        };
        assert!(
            failure
                .to_string()
                .ends_with("(the limit of 64 processes and threads was reached)"),
            "{failure}"
        );
        assert_eq!(
            ScriptFailure::TimeLimitExceeded {
                time_limit_ms: 2500
            }
            .to_string(),
            "the script exceeded the time limit of 2500 ms and was stopped"
        );
    }

    #[test]
    fn only_the_harness_s_own_findings_may_come_from_it() {
        assert!(!ScriptFailure::crashed(9).reportable_by_harness());
        let exited = |via| ScriptFailure::ScriptExited {
            exit_code: json!(1),
            via,
        };
        assert!(exited(ExitVia::SysExit).reportable_by_harness());
        assert!(!exited(ExitVia::ExitStatus).reportable_by_harness());
    }
}
