//! Runs validated scripts in nsjail: one fresh jail and one private directory per execution,
//! a concurrency limit, and the classification of what happened. A script that fails is an
//! [`Outcome`], not an error; [`SandboxError`] is only for the sandbox itself failing.

mod command;
mod process;

use std::fmt;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::config::{Limits, SandboxConfig};
use crate::harness::{self, ProtocolError, Reported};
use crate::validate::{Script, validate};
use process::{Caps, Captured, Finished};

/// nsjail's log is a few lines; more than this is noise.
const LOG_CAP: usize = 64 * 1024;
/// Room for the frame envelope around the result.
const FRAME_OVERHEAD: usize = 64 * 1024;
/// A failed health check is retried at most this often.
const HEALTH_RETRY: Duration = Duration::from_secs(10);
/// The canary run at start-up and by the health check: interpreter, harness and jail.
const CANARY: &str = "def main():\n    return 'ok'\n";

/// Runs scripts; shared by every request.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    limits: Limits,
    permits: Semaphore,
    health: Mutex<Health>,
}

#[derive(Debug, Clone)]
struct Health {
    status: Result<(), String>,
    checked: Instant,
}

/// One finished execution: what happened and what the script printed.
#[derive(Debug)]
pub struct Execution {
    pub outcome: Outcome,
    pub stdout: Output,
    pub stderr: Output,
    pub duration: Duration,
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
    #[error("{} {type_name}: {message}", if *.during_load { "the script raised, while loading and before main() was called," } else { "main() raised" })]
    Exception {
        during_load: bool,
        type_name: String,
        message: String,
        traceback: String,
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
    #[error("the script's result could not be read ({0}); do not write to file descriptor 3")]
    UnreadableResult(ProtocolError),
}

/// The sandbox could not run the script: not the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// nsjail or the sandbox Python is missing or broken (503: it may come back).
    #[error("the sandbox is unavailable: {0}")]
    Unavailable(String),
    /// The service failed at something it should always be able to do (500).
    #[error("{context}: {source}")]
    Internal {
        context: &'static str,
        source: io::Error,
    },
}

impl Sandbox {
    pub fn new(mut config: SandboxConfig, limits: Limits) -> Self {
        // nsjail runs in the execution's directory: a relative profile path must not depend on it.
        if let Ok(profile) = std::path::absolute(&config.profile) {
            config.profile = profile;
        }
        let permits = Semaphore::new(config.concurrency());
        let health = Mutex::new(Health {
            status: Err("not checked yet".to_owned()),
            checked: Instant::now(),
        });
        Self {
            config,
            limits,
            permits,
            health,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Runs `script` in a fresh jail and waits for it, at most the time limit.
    #[tracing::instrument(skip_all, fields(script_bytes = script.as_str().len()))]
    pub async fn execute(&self, script: &Script) -> Result<Execution, SandboxError> {
        let _permit =
            self.permits.acquire().await.map_err(|_| {
                SandboxError::Unavailable("the service is shutting down".to_owned())
            })?;
        // Declared before the child runs, so it is deleted after the child is reaped.
        let workdir = self.prepare(script.as_str())?;
        let cmd = command::nsjail(&self.config, &self.limits, workdir.path());
        let caps = Caps {
            stdout: self.limits.output_bytes,
            stderr: self.limits.output_bytes,
            result: self.limits.result_bytes + FRAME_OVERHEAD,
            log: LOG_CAP,
        };
        let finished = process::run(cmd, command::FDS, self.limits.time_limit(), caps)
            .await
            .map_err(|source| self.spawn_error(source))?;
        let execution = classify(finished, &self.limits);
        if let Err(SandboxError::Unavailable(reason)) = &execution {
            tracing::error!(reason, "sandbox failed to start the harness");
        }
        execution
    }

    /// Runs the canary script and records the result for [`Sandbox::health`].
    pub async fn check(&self) -> Result<(), String> {
        let canary =
            validate(CANARY.to_owned(), CANARY.len()).map_err(|error| error.to_string())?;
        let status = match self.execute(&canary).await {
            Ok(Execution {
                outcome: Outcome::Returned(value),
                ..
            }) if value.get() == "\"ok\"" => Ok(()),
            Ok(execution) => Err(format!(
                "the canary script did not return \"ok\": {execution:?}"
            )),
            Err(SandboxError::Unavailable(reason)) => Err(reason),
            Err(error) => Err(error.to_string()),
        };
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *health = Health {
            status: status.clone(),
            checked: Instant::now(),
        };
        status
    }

    /// Whether scripts can run: the last canary's result, plus a cheap check that nsjail, the
    /// interpreter and the profile are still there. A failure is re-checked at most every 10 s.
    pub async fn health(&self) -> Result<(), String> {
        let last = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match last.status {
            Ok(()) => self.files_present(),
            Err(_) if last.checked.elapsed() >= HEALTH_RETRY => self.check().await,
            Err(reason) => Err(reason),
        }
    }

    fn files_present(&self) -> Result<(), String> {
        let files = [
            ("nsjail", &self.config.nsjail),
            ("the sandbox Python", &self.config.python),
            ("the jail profile", &self.config.profile),
        ];
        for (what, path) in files {
            if !path.is_file() {
                return Err(format!("{what} is missing at {}", path.display()));
            }
        }
        Ok(())
    }

    fn spawn_error(&self, source: io::Error) -> SandboxError {
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                SandboxError::Unavailable(format!(
                    "cannot run nsjail at {}: {source}",
                    self.config.nsjail.display()
                ))
            }
            _ => SandboxError::Internal {
                context: "running the sandbox process failed",
                source,
            },
        }
    }

    /// The execution's private directory: the harness and script readable by the jail's uid,
    /// and a `tmp/` that only the jail's uid can use.
    fn prepare(&self, script: &str) -> Result<tempfile::TempDir, SandboxError> {
        let internal = |context| move |source| SandboxError::Internal { context, source };
        let dir = tempfile::Builder::new()
            .prefix("pyexec-")
            .tempdir_in(&self.config.work_root)
            .map_err(|source| match source.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                    SandboxError::Unavailable(format!(
                        "no space for an execution directory in {}",
                        self.config.work_root.display()
                    ))
                }
                _ => SandboxError::Internal {
                    context: "creating the execution directory failed",
                    source,
                },
            })?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(internal("setting the execution directory's mode failed"))?;
        harness::install(dir.path(), script).map_err(internal("writing the script failed"))?;
        let tmp = dir.path().join(command::TMP_DIR);
        std::fs::create_dir(&tmp).map_err(internal("creating the execution's tmp failed"))?;
        chown(&tmp, Some(self.config.uid), Some(self.config.gid)).map_err(internal(
            "handing the execution's tmp to the sandbox uid failed",
        ))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(internal("setting the execution's tmp mode failed"))?;
        Ok(dir)
    }
}

/// Decides what happened from what the service observed: its own deadline first, then whether
/// the harness ever started (if not, the sandbox is broken), then the harness's final frame,
/// then the exit status. nsjail's exit code alone is never trusted: a script can exit 255 too.
fn classify(finished: Finished, limits: &Limits) -> Result<Execution, SandboxError> {
    let Finished {
        status,
        stdout,
        stderr,
        result,
        log,
        elapsed,
    } = finished;
    let report = harness::parse(&result.bytes, result.truncated);
    let outcome = match status {
        None => Outcome::Failed(ScriptFailure::TimeLimit {
            limit_ms: limits.time_limit_ms,
        }),
        Some(_) if !report.started => {
            return Err(SandboxError::Unavailable(startup_failure(&log, &stderr)));
        }
        Some(status) => match report.outcome {
            Some(Ok(reported)) => outcome_of(reported),
            Some(Err(error)) => Outcome::Failed(ScriptFailure::UnreadableResult(error)),
            None => Outcome::Failed(match (status.code(), status.signal()) {
                (_, Some(signal)) => ScriptFailure::Crashed { signal },
                (Some(code), None) => ScriptFailure::Exited { code },
                (None, None) => ScriptFailure::Exited { code: -1 },
            }),
        },
    };
    Ok(Execution {
        outcome,
        stdout: decode(stdout),
        stderr: decode(stderr),
        duration: elapsed,
    })
}

fn outcome_of(reported: Reported) -> Outcome {
    Outcome::Failed(match reported {
        Reported::Returned(value) => return Outcome::Returned(value),
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
        } => ScriptFailure::Exception {
            during_load,
            type_name,
            message,
            traceback,
        },
        Reported::NotSerializable { type_name, message } => {
            ScriptFailure::NotSerializable { type_name, message }
        }
        Reported::ResultTooLarge { bytes, limit } => ScriptFailure::ResultTooLarge { bytes, limit },
        Reported::Exit { code } => ScriptFailure::SysExit { code },
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

fn decode(captured: Captured) -> Output {
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

/// The path of nsjail's profile, for reports: its file stem (`cloudrun`).
pub fn profile_name(profile: &Path) -> String {
    profile.file_stem().map_or_else(
        || "unknown".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use std::process::ExitStatus;

    use super::*;

    fn finished(status: Option<i32>, result: &str, log: &str) -> Finished {
        Finished {
            status: status.map(ExitStatus::from_raw),
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

    const STARTED: &str = "{\"event\": \"started\", \"v\": 1}\n";

    fn failure(finished: Finished) -> ScriptFailure {
        match classify(finished, &Limits::default()).unwrap().outcome {
            Outcome::Failed(failure) => failure,
            Outcome::Returned(value) => panic!("returned {value}"),
        }
    }

    #[test]
    fn the_deadline_wins_over_everything_else() {
        let failure = failure(finished(None, "", ""));
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
        let error = classify(finished(Some(255 << 8), "", log), &Limits::default()).unwrap_err();
        let SandboxError::Unavailable(reason) = error else {
            panic!()
        };
        assert!(reason.contains("execve('/x') failed"), "{reason}");
    }

    #[test]
    fn exit_255_after_starting_is_the_scripts_own_exit() {
        let failure = failure(finished(Some(255 << 8), STARTED, ""));
        assert!(
            matches!(failure, ScriptFailure::Exited { code: 255 }),
            "{failure:?}"
        );
    }

    #[test]
    fn a_signal_after_starting_is_a_crash() {
        let failure = failure(finished(Some(11), STARTED, ""));
        assert!(failure.to_string().contains("SIGSEGV"), "{failure}");
    }

    #[test]
    fn output_is_decoded_lossily() {
        let returned =
            format!("{STARTED}{{\"v\": 1, \"event\": \"returned\", \"result\": null}}\n");
        let execution = classify(finished(Some(0), &returned, ""), &Limits::default()).unwrap();
        assert_eq!(execution.stdout.text, "out \u{fffd}");
    }
}
