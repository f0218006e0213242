//! What an execution came to, decided from what the service observed: its own deadline, the
//! cgroup's OOM counter, whether the harness ever started, the harness's final frame, and
//! the script's exit (from nsjail's log when nsjail supervised it). nsjail's exit code alone
//! is never trusted: 137 and 255 are exit codes a script can produce too.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use serde_json::value::RawValue;

use super::SandboxError;
use super::process::{Captured, Ended, Finished};
use crate::config::{Limits, Profile};
use crate::harness::{self, ProtocolError, Reported};

/// One finished execution: what happened and what the script printed.
#[derive(Debug)]
pub struct Execution {
    pub outcome: Outcome,
    pub stdout: Output,
    pub stderr: Output,
    pub duration: Duration,
    /// The most memory the execution's cgroup held, where there was one.
    pub memory_peak_bytes: Option<u64>,
}

/// Captured output, decoded lossily: invalid UTF-8 becomes U+FFFD.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub text: String,
    pub truncated: bool,
}

/// What the script did.
#[derive(Debug)]
pub enum Outcome {
    /// `main()` returned this JSON, exactly as the harness encoded it.
    Returned(Box<RawValue>),
    Failed(ScriptFailure),
}

/// Every way a script can fail. Each is the caller's to fix, so each is a 400.
#[derive(Debug, thiserror::Error)]
pub enum ScriptFailure {
    #[error("{}", syntax_message(.message, *.line, *.column, .text.as_deref()))]
    Syntax {
        message: String,
        line: Option<u64>,
        column: Option<u64>,
        text: Option<String>,
    },
    #[error("{message}")]
    NoMain { message: String },
    #[error("{message}")]
    MainRequiresArguments { message: String },
    #[error("{} {type_name}: {message}{}",
        if *.during_load { "the script raised, while loading and before main() was called," } else { "main() raised" },
        .hint.as_ref().map(|hint| format!(" ({hint})")).unwrap_or_default())]
    Exception {
        during_load: bool,
        type_name: String,
        message: String,
        traceback: String,
        hint: Option<String>,
    },
    #[error("{message}")]
    NotSerializable { type_name: String, message: String },
    #[error("main() returned a result of {bytes} bytes as JSON; the limit is {limit} bytes")]
    ResultTooLarge { bytes: u64, limit: u64 },
    #[error("the script called sys.exit({code}) before main() returned")]
    SysExit { code: serde_json::Value },
    #[error(
        "the script exited with status {code} before main() returned (os._exit or a fatal interpreter error; see stderr)"
    )]
    Exited { code: i32 },
    #[error("the script was stopped by signal {signal} ({}) before main() returned; see stderr", signal_name(*.signal))]
    Crashed { signal: i32 },
    #[error("the script exceeded the time limit of {} and was stopped", DisplayMs(*.limit_ms))]
    TimeLimit { limit_ms: u64 },
    #[error("the script exceeded the memory limit of {} MiB", .limit_bytes >> 20)]
    MemoryLimit { limit_bytes: u64 },
    #[error("the script exceeded the CPU time limit of {limit_secs} s and was stopped")]
    CpuLimit { limit_secs: u64 },
    #[error("the script's result could not be read ({0}); do not write to file descriptor 3")]
    UnreadableResult(ProtocolError),
}

/// How the script's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Termination {
    Exited(i32),
    Signaled(i32),
}

const SIGXCPU: i32 = 24;

/// Decides what happened; an error only when the harness never started (a broken sandbox).
pub fn classify(
    finished: &Finished,
    profile: Profile,
    oom_killed: bool,
    limits: &Limits,
) -> Result<Outcome, SandboxError> {
    let Finished {
        ended,
        stderr,
        result,
        log,
        ..
    } = finished;
    let report = harness::parse(&result.bytes, result.truncated);
    let failure = match *ended {
        Ended::Cancelled => return Err(SandboxError::ShuttingDown),
        Ended::TimedOut => ScriptFailure::TimeLimit {
            limit_ms: limits.time_limit_ms,
        },
        Ended::Exited(_) if !report.started => {
            return Err(SandboxError::Unavailable(startup_failure(log, stderr)));
        }
        Ended::Exited(status) => match report.outcome {
            Some(Ok(reported)) => match reported_failure(reported, limits) {
                Ok(value) => return Ok(Outcome::Returned(value)),
                Err(failure) => failure,
            },
            Some(Err(error)) => ScriptFailure::UnreadableResult(error),
            // The kernel's OOM killer struck in the execution's cgroup: a SIGKILL nobody sent.
            None if oom_killed => ScriptFailure::MemoryLimit {
                limit_bytes: limits.memory_bytes,
            },
            None => {
                let termination = if profile.namespaced() {
                    supervised_termination(&log.bytes)
                } else {
                    None
                };
                match termination.unwrap_or_else(|| direct_termination(status)) {
                    Termination::Signaled(SIGXCPU) => ScriptFailure::CpuLimit {
                        limit_secs: limits.cpu_secs,
                    },
                    Termination::Signaled(signal) => ScriptFailure::Crashed { signal },
                    Termination::Exited(code) => ScriptFailure::Exited { code },
                }
            }
        },
    };
    Ok(Outcome::Failed(failure))
}

/// The returned value, or the failure the harness reported.
fn reported_failure(reported: Reported, limits: &Limits) -> Result<Box<RawValue>, ScriptFailure> {
    Err(match reported {
        Reported::Returned(value) => return Ok(value),
        Reported::SyntaxError {
            message,
            line,
            column,
            text,
        } => ScriptFailure::Syntax {
            message,
            line,
            column,
            text,
        },
        Reported::NoMain { message } => ScriptFailure::NoMain { message },
        Reported::MainRequiresArguments { message } => {
            ScriptFailure::MainRequiresArguments { message }
        }
        Reported::Exception {
            during_load,
            type_name,
            message,
            traceback,
            hint,
        } => ScriptFailure::Exception {
            during_load,
            type_name,
            message,
            traceback,
            hint,
        },
        Reported::Memory => ScriptFailure::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        },
        Reported::Cpu => ScriptFailure::CpuLimit {
            limit_secs: limits.cpu_secs,
        },
        Reported::NotSerializable { type_name, message } => {
            ScriptFailure::NotSerializable { type_name, message }
        }
        Reported::ResultTooLarge { bytes, limit } => ScriptFailure::ResultTooLarge { bytes, limit },
        Reported::Exit { code } => ScriptFailure::SysExit { code },
    })
}

/// Without namespaces nsjail execs into the interpreter: the wait status is the script's own.
fn direct_termination(status: std::process::ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (_, Some(signal)) => Termination::Signaled(signal),
        (Some(code), None) => Termination::Exited(code),
        (None, None) => Termination::Exited(-1),
    }
}

/// A supervising nsjail logs how its child ended (its own exit code folds signals into
/// 128 + N, which a script can imitate): `pid=7 (...) exited with status: 137, (PIDs left: 0)`
/// or `... terminated with signal: SIGSEGV (11), ...`.
fn supervised_termination(log: &[u8]) -> Option<Termination> {
    let log = String::from_utf8_lossy(log);
    log.lines().rev().find_map(|line| {
        if let Some((_, rest)) = line.split_once(" exited with status: ") {
            let code = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            return code.parse().ok().map(Termination::Exited);
        }
        let (_, rest) = line.split_once(" terminated with signal: ")?;
        let number = rest.split_once('(')?.1.split_once(')')?.0;
        number.parse().ok().map(Termination::Signaled)
    })
}

/// The reason the harness never started, for the operator: nsjail's error lines, else the
/// interpreter's stderr.
fn startup_failure(log: &Captured, stderr: &Captured) -> String {
    let log = String::from_utf8_lossy(&log.bytes);
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("[E]") || line.starts_with("[F]"))
        .collect();
    let detail = if errors.is_empty() {
        String::from_utf8_lossy(&stderr.bytes).trim().to_owned()
    } else {
        errors.join("; ")
    };
    let detail: String = detail.chars().take(1000).collect();
    if detail.is_empty() {
        "the jail exited before the harness started".to_owned()
    } else {
        format!("the jail exited before the harness started: {detail}")
    }
}

/// Captured bytes as text: invalid UTF-8 becomes U+FFFD.
pub fn decode(captured: Captured) -> Output {
    let text = match String::from_utf8(captured.bytes) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    };
    Output {
        text,
        truncated: captured.truncated,
    }
}

fn syntax_message(
    message: &str,
    line: Option<u64>,
    column: Option<u64>,
    text: Option<&str>,
) -> String {
    let position = match (line, column) {
        (Some(line), Some(column)) => format!(" on line {line}, column {column}"),
        (Some(line), None) => format!(" on line {line}"),
        _ => String::new(),
    };
    let text = text
        .map(|text| format!(": {}", text.trim()))
        .unwrap_or_default();
    format!("syntax error{position}: {message}{text}")
}

/// The conventional name of a signal, for error messages.
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

struct DisplayMs(u64);

impl fmt::Display for DisplayMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{} s", self.0 / 1000)
        } else {
            write!(f, "{} ms", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::ExitStatus;

    use super::*;

    const STARTED: &str = "{\"event\": \"started\", \"v\": 1}\n";

    fn finished(status: Option<i32>, result: &str, log: &str) -> Finished {
        Finished {
            ended: status.map_or(Ended::TimedOut, |raw| {
                Ended::Exited(ExitStatus::from_raw(raw))
            }),
            stdout: Captured {
                bytes: b"out \xff".to_vec(),
                truncated: false,
            },
            stderr: Captured::default(),
            result: Captured {
                bytes: result.as_bytes().to_vec(),
                truncated: false,
            },
            log: Captured {
                bytes: log.as_bytes().to_vec(),
                truncated: false,
            },
            elapsed: Duration::from_millis(5),
        }
    }

    fn failure_in(profile: Profile, oom: bool, finished: &Finished) -> ScriptFailure {
        match classify(finished, profile, oom, &Limits::default()).unwrap() {
            Outcome::Failed(failure) => failure,
            Outcome::Returned(value) => panic!("returned {value}"),
        }
    }

    fn failure(finished: &Finished) -> ScriptFailure {
        failure_in(Profile::CloudRun, false, finished)
    }

    #[test]
    fn the_deadline_wins_over_everything_else() {
        let failure = failure(&finished(None, "", ""));
        assert!(matches!(
            failure,
            ScriptFailure::TimeLimit { limit_ms: 30_000 }
        ));
        assert!(
            failure.to_string().contains("time limit of 30 s"),
            "{failure}"
        );
    }

    #[test]
    fn no_started_frame_means_the_sandbox_failed_whatever_the_exit_code() {
        let log = "[I] Mode: STANDALONE_EXECVE\n[E][2026] execve('/x') failed: No such file\n";
        let error = classify(
            &finished(Some(255 << 8), "", log),
            Profile::CloudRun,
            false,
            &Limits::default(),
        )
        .unwrap_err();
        let SandboxError::Unavailable(reason) = error else {
            panic!()
        };
        assert!(reason.contains("execve('/x') failed"), "{reason}");
    }

    #[test]
    fn exit_255_after_starting_is_the_scripts_own_exit() {
        let failure = failure(&finished(Some(255 << 8), STARTED, ""));
        assert!(
            matches!(failure, ScriptFailure::Exited { code: 255 }),
            "{failure:?}"
        );
    }

    #[test]
    fn a_signal_after_starting_is_a_crash() {
        let failure = failure(&finished(Some(11), STARTED, ""));
        assert!(failure.to_string().contains("SIGSEGV"), "{failure}");
    }

    #[test]
    fn a_supervised_exit_is_read_from_nsjails_log_not_its_exit_code() {
        let exited = "[I] pid=7 ([STANDALONE MODE]) exited with status: 139, (PIDs left: 0)\n";
        let failure = failure_in(
            Profile::Strict,
            false,
            &finished(Some(139 << 8), STARTED, exited),
        );
        assert!(
            matches!(failure, ScriptFailure::Exited { code: 139 }),
            "{failure:?}"
        );
        let signaled =
            "[I] pid=7 ([STANDALONE MODE]) terminated with signal: SIGSEGV (11), (PIDs left: 0)\n";
        let failure = failure_in(
            Profile::Strict,
            false,
            &finished(Some(139 << 8), STARTED, signaled),
        );
        assert!(
            matches!(failure, ScriptFailure::Crashed { signal: 11 }),
            "{failure:?}"
        );
    }

    #[test]
    fn an_oom_kill_is_a_memory_limit_and_sigxcpu_a_cpu_limit() {
        let killed =
            "[I] pid=7 ([STANDALONE MODE]) terminated with signal: SIGKILL (9), (PIDs left: 0)\n";
        let failure = failure_in(
            Profile::Strict,
            true,
            &finished(Some(137 << 8), STARTED, killed),
        );
        assert!(
            failure.to_string().contains("memory limit of 512 MiB"),
            "{failure}"
        );
        let failure = failure_in(Profile::CloudRun, false, &finished(Some(24), STARTED, ""));
        assert!(failure.to_string().contains("CPU time limit"), "{failure}");
    }

    #[test]
    fn output_is_decoded_lossily() {
        let output = decode(Captured {
            bytes: b"out \xff".to_vec(),
            truncated: true,
        });
        assert_eq!(
            (output.text.as_str(), output.truncated),
            ("out \u{fffd}", true)
        );
    }
}
