//! What an execution came to, decided from what the service observed: its own deadline, the
//! cgroup's OOM counter, whether the harness ever started, the harness's final frame, and
//! the script's exit (from nsjail's log when nsjail supervised it). nsjail's exit code alone
//! is never trusted: 137 and 255 are exit codes a script can produce too.

use std::os::unix::process::ExitStatusExt;

use super::process::{Captured, Ended, Finished};
use super::{RunPath, SandboxError, recheck};
use crate::config::Limits;
use crate::failure::{ExitVia, ScriptFailure};
use crate::harness::{self, Reported, Returned};
use crate::protocol::ScriptOutput;

/// One finished execution: what happened and what the script printed.
#[derive(Debug)]
pub struct Execution {
    pub outcome: Outcome,
    pub output: ScriptOutput,
    /// The most memory the execution's cgroup held, where there was one.
    pub memory_peak_bytes: Option<u64>,
    /// The profile it ran in.
    pub profile: crate::config::Profile,
    /// Which way it ran.
    pub path: RunPath,
    /// Why it did not run warm, when it ran cold.
    pub cold_because: Option<String>,
    /// How long it waited for a slot.
    pub queue_wait: std::time::Duration,
}

/// What the script did.
#[derive(Debug)]
pub enum Outcome {
    /// `main()` returned: its JSON, exactly as the harness encoded it, and what came with it.
    Returned(Returned),
    Failed(ScriptFailure),
}

/// How the script's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Termination {
    Exited(i32),
    Signaled(i32),
}

const SIGXCPU: i32 = 24;

/// Decides what happened; an error only when the harness never started (a broken sandbox).
/// What the service observed itself wins over the harness's report: its deadline, then a
/// memory kill (the cgroup's OOM killer, or the watchdog where there is no cgroup: passing the
/// limit is a failure even if `main()` went on to return), then how the process ended.
/// `nsjail_log`: nsjail supervised the script (a cold namespaced jail) and logged how it
/// ended; otherwise the exit status seen is the script's own.
pub fn classify(
    finished: &Finished,
    nsjail_log: bool,
    memory_killed: bool,
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
        Ended::TimedOut => ScriptFailure::TimeLimitExceeded {
            time_limit_ms: limits.time_limit_ms,
        },
        Ended::Exited(_) if !report.started => {
            return Err(SandboxError::Unavailable(startup_failure(log, stderr)));
        }
        Ended::Exited(_) if memory_killed => ScriptFailure::MemoryLimitExceeded {
            memory_limit_bytes: limits.memory_bytes,
        },
        Ended::Exited(status) => match report.outcome {
            Some(Ok(Reported::Returned(returned))) => {
                match recheck::check_returned(returned, limits) {
                    Ok(returned) => return Ok(Outcome::Returned(returned)),
                    Err(failure) => failure,
                }
            }
            Some(Ok(Reported::Failed(failure))) => failure,
            Some(Err(error)) => ScriptFailure::ResultUnreadable {
                problem: error.to_string(),
            },
            None => {
                let termination = if nsjail_log {
                    supervised_termination(&log.bytes)
                } else {
                    None
                };
                match termination.unwrap_or_else(|| direct_termination(status)) {
                    Termination::Signaled(SIGXCPU) => ScriptFailure::CpuLimitExceeded {
                        cpu_limit_secs: limits.cpu_secs,
                    },
                    Termination::Signaled(signal) => ScriptFailure::crashed(signal),
                    Termination::Exited(code) => ScriptFailure::ScriptExited {
                        exit_code: code.into(),
                        via: ExitVia::ExitStatus,
                    },
                }
            }
        },
    };
    Ok(Outcome::Failed(failure))
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

/// The reason the harness never started, for the operator, on one line: nsjail's error lines
/// (from its log, or from stderr when it failed before reading its flags), else the
/// interpreter's stderr.
pub(super) fn startup_failure(log: &Captured, stderr: &Captured) -> String {
    let log = String::from_utf8_lossy(&log.bytes);
    let stderr = String::from_utf8_lossy(&stderr.bytes);
    let errors: Vec<&str> = log
        .lines()
        .chain(stderr.lines())
        .filter(|line| line.starts_with("[E]") || line.starts_with("[F]"))
        .collect();
    let detail = if errors.is_empty() {
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines.join("; ")
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

/// What the script printed, as text (invalid UTF-8 becomes U+FFFD), and how long it ran.
pub fn output(finished: Finished) -> ScriptOutput {
    let (stdout, stdout_truncated) = decode(finished.stdout);
    let (stderr, stderr_truncated) = decode(finished.stderr);
    ScriptOutput {
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        duration_ms: crate::protocol::millis(finished.elapsed),
    }
}

fn decode(captured: Captured) -> (String, bool) {
    let text = match String::from_utf8(captured.bytes) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    };
    (text, captured.truncated)
}

#[cfg(test)]
mod tests {
    use std::process::ExitStatus;
    use std::time::Duration;

    use super::*;

    const STARTED: &str = "{\"event\": \"started\", \"v\": 2}\n";

    fn finished(status: Option<i32>, result: &str, log: &str) -> Finished {
        Finished {
            ended: status.map_or(Ended::TimedOut, |raw| {
                Ended::Exited(ExitStatus::from_raw(raw))
            }),
            stdout: Captured {
                bytes: b"out \xff".to_vec(),
                truncated: false,
                ..Captured::default()
            },
            stderr: Captured::default(),
            result: Captured {
                bytes: result.as_bytes().to_vec(),
                truncated: false,
                ..Captured::default()
            },
            log: Captured {
                bytes: log.as_bytes().to_vec(),
                truncated: false,
                ..Captured::default()
            },
            spawned_at: std::time::Instant::now(),
            elapsed: Duration::from_millis(5),
        }
    }

    fn failure_in(nsjail_log: bool, oom: bool, finished: &Finished) -> ScriptFailure {
        match classify(finished, nsjail_log, oom, &Limits::default()).unwrap() {
            Outcome::Failed(failure) => failure,
            Outcome::Returned(returned) => panic!("returned {returned:?}"),
        }
    }

    fn failure(finished: &Finished) -> ScriptFailure {
        failure_in(false, false, finished)
    }

    #[test]
    fn the_deadline_wins_over_everything_else() {
        let failure = failure(&finished(None, "", ""));
        assert_eq!(
            failure,
            ScriptFailure::TimeLimitExceeded {
                time_limit_ms: 30_000
            }
        );
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
            false,
            false,
            &Limits::default(),
        )
        .unwrap_err();
        let SandboxError::Unavailable(reason) = error else {
            panic!()
        };
        assert!(reason.contains("execve('/x') failed"), "{reason}");
        let on_stderr = Finished {
            stderr: Captured {
                bytes: b"[E] config failed\n[W] detail\nmore\n[F] giving up\n".to_vec(),
                truncated: false,
                ..Captured::default()
            },
            ..finished(Some(255 << 8), "", "")
        };
        let error = classify(&on_stderr, true, false, &Limits::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the sandbox is unavailable: the jail exited before the harness started: \
             [E] config failed; [F] giving up"
        );
    }

    #[test]
    fn exit_255_after_starting_is_the_scripts_own_exit() {
        let failure = failure(&finished(Some(255 << 8), STARTED, ""));
        assert_eq!(
            failure,
            ScriptFailure::ScriptExited {
                exit_code: 255.into(),
                via: ExitVia::ExitStatus
            }
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
        let failure = failure_in(true, false, &finished(Some(139 << 8), STARTED, exited));
        assert_eq!(
            failure,
            ScriptFailure::ScriptExited {
                exit_code: 139.into(),
                via: ExitVia::ExitStatus
            }
        );
        let signaled =
            "[I] pid=7 ([STANDALONE MODE]) terminated with signal: SIGSEGV (11), (PIDs left: 0)\n";
        let failure = failure_in(true, false, &finished(Some(139 << 8), STARTED, signaled));
        assert_eq!(failure, ScriptFailure::crashed(11));
    }

    #[test]
    fn an_oom_kill_is_a_memory_limit_and_sigxcpu_a_cpu_limit() {
        let killed =
            "[I] pid=7 ([STANDALONE MODE]) terminated with signal: SIGKILL (9), (PIDs left: 0)\n";
        let failure = failure_in(true, true, &finished(Some(137 << 8), STARTED, killed));
        assert!(
            failure.to_string().contains("memory limit of 512 MiB"),
            "{failure}"
        );
        let failure = failure_in(false, false, &finished(Some(24), STARTED, ""));
        assert!(failure.to_string().contains("CPU time limit"), "{failure}");
    }

    #[test]
    fn output_is_decoded_lossily() {
        let mut done = finished(Some(0), STARTED, "");
        done.stdout.truncated = true;
        let output = output(done);
        assert_eq!(
            (
                output.stdout.as_str(),
                output.stdout_truncated,
                output.duration_ms
            ),
            ("out \u{fffd}", true, 5)
        );
    }
}
