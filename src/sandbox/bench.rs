//! For `make bench` only, not the service: the baseline it holds executions against.

use std::time::Duration;

use super::process::{self, Caps};
use super::{LOG_CAP, Sandbox, SandboxError, cgroup, command};

/// A cold jail with exactly an execution's flags, slot, directory and cgroup, running the
/// sandbox's Python with `python_args` instead of the harness. How long the jail took, from
/// spawn to exit; an error if it did not exit 0.
pub async fn baseline(sandbox: &Sandbox, python_args: &[&str]) -> Result<Duration, SandboxError> {
    let (Some(work_dir), Some(harness_dir)) = (sandbox.work_dir(), sandbox.harness_dir()) else {
        return Err(SandboxError::Unavailable(
            "the sandbox has not been started".to_owned(),
        ));
    };
    let mut slot = sandbox.admit()?.acquire().await?;
    let profile = sandbox.profile();
    let prepared = sandbox
        .prepare(work_dir, profile, slot.uid, &sandbox.limits)
        .await?;
    let run_dir = prepared.workdir.clone();
    slot.hold(prepared.workdir, prepared.cgroup);
    let cmd = command::build(&command::Run {
        config: &sandbox.config,
        limits: &sandbox.limits,
        profile,
        workdir: run_dir.as_deref(),
        harness_dir: &harness_dir,
        uid: slot.uid,
        inner_uid: command::inner_uid(&sandbox.slots.uids(), slot.uid),
        cgroup_dirs: slot.cgroup().map(cgroup::Cgroup::dirs).unwrap_or_default(),
        python: command::Python::Args(python_args),
        masks: &sandbox.masks,
    });
    let caps = Caps {
        stdout: LOG_CAP,
        stderr: LOG_CAP,
        result: LOG_CAP,
        log: LOG_CAP,
    };
    let launched = sandbox.spawn(cmd, Vec::new())?;
    let mut jail = launched.jail;
    let finished = process::supervise(
        &mut jail,
        launched.pipes,
        launched.started,
        process::Watch {
            deadline: sandbox.limits.time_limit(),
            caps,
            cancel: &sandbox.cancel,
            tap: None,
        },
    )
    .await
    .map_err(|source| SandboxError::Internal {
        context: "supervising the baseline failed",
        source,
    })?;
    match finished.ended {
        process::Ended::Exited(status) if status.success() => Ok(finished.elapsed),
        _ => Err(SandboxError::Unavailable(format!(
            "the baseline jail failed: {}",
            String::from_utf8_lossy(&finished.stderr.bytes)
        ))),
    }
}
