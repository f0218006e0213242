//! Runs validated scripts in nsjail: one fresh jail, one private directory, one slot (a host
//! uid of its own) and, where the host allows, one cgroup per execution. At start-up it finds
//! out what this kernel allows and picks the strongest profile that works. A script that fails
//! is an [`Outcome`], not an error; [`SandboxError`] is only for the sandbox itself failing.

mod cgroup;
mod command;
mod outcome;
mod process;
mod profile;
mod slots;

use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use outcome::{Execution, Outcome};
pub use profile::{Isolation, LimitsBackend};
pub use slots::Ticket;

use crate::config::{Limits, Profile, ProfileChoice, SandboxConfig};
use crate::harness;
use crate::validate::{Script, validate};
use cgroup::Cgroups;
use process::Caps;
use slots::{Refused, Slots};
use tokio_util::sync::CancellationToken;

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
    profile: Profile,
    cgroups: Option<Cgroups>,
    slots: Arc<Slots>,
    health: Mutex<Health>,
    /// Fired when the shutdown grace is over: every running execution stops.
    cancel: CancellationToken,
}

#[derive(Debug, Clone)]
struct Health {
    status: Result<(), String>,
    checked: Instant,
}

/// The sandbox could not run the script: not the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// nsjail or the sandbox Python is missing or broken (503: it may come back).
    #[error("the sandbox is unavailable: {0}")]
    Unavailable(String),
    /// Every sandbox is busy and the request could not wait (503, retry soon).
    #[error("the service is busy: {0}; retry shortly")]
    Busy(&'static str),
    /// The service is stopping: the execution was refused or stopped (503, retry elsewhere).
    #[error("the service is shutting down; retry the request")]
    ShuttingDown,
    /// The service failed at something it should always be able to do (500).
    #[error("{context}")]
    Internal {
        context: &'static str,
        source: io::Error,
    },
}

impl From<Refused> for SandboxError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::QueueFull => Self::Busy("every sandbox is busy and the queue is full"),
            Refused::QueueTimeout => Self::Busy("no sandbox became free within the queue timeout"),
            Refused::Closed => Self::ShuttingDown,
        }
    }
}

/// The service must not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "sandbox.require is `{}` but only the `{}` profile works on this host ({reason}); refusing to start",
        .required.name(), .available.name()
    )]
    ProfileTooWeak {
        required: Profile,
        available: Profile,
        reason: String,
    },
}

impl Sandbox {
    /// A sandbox that has probed nothing and run nothing: unhealthy until [`Sandbox::start`].
    /// Enough for what needs no jail (routing, request parsing).
    pub fn new(mut config: SandboxConfig, limits: Limits) -> Self {
        // nsjail runs in the execution's directory: relative paths must not depend on it.
        if let Ok(dir) = std::path::absolute(&config.profile_dir) {
            config.profile_dir = dir;
        }
        let queue_timeout = Duration::from_millis(config.queue_timeout_ms);
        let slots = Slots::new(
            config.uid_base,
            config.concurrency(),
            config.max_queue,
            queue_timeout,
        );
        let profile = match config.profile {
            ProfileChoice::Auto | ProfileChoice::Strict => Profile::Strict,
            ProfileChoice::CloudRun => Profile::CloudRun,
        };
        Self {
            config,
            limits,
            profile,
            cgroups: None,
            slots,
            health: Mutex::new(Health {
                status: Err("the sandbox has not been started".to_owned()),
                checked: Instant::now(),
            }),
            cancel: CancellationToken::new(),
        }
    }

    /// Finds what this host allows (cgroups, then the profile: for `auto`, `strict` if its
    /// canary runs, else `cloudrun` with a loud warning) and checks the sandbox works. A sandbox
    /// that does not work at all still starts, unhealthy, so `/health` can say why; one that
    /// only works below `sandbox.require` does not start.
    pub async fn start(config: SandboxConfig, limits: Limits) -> Result<Self, StartError> {
        let mut sandbox = Self::new(config, limits);
        if sandbox.config.cgroups {
            let limits = sandbox.limits.clone();
            let probe = format!("probe-{}", sandbox.config.uid_base);
            sandbox.cgroups = blocking(move || Cgroups::detect(&limits, &probe))
                .await
                .unwrap_or_else(|error| Err(error.to_string()))
                .inspect_err(|reason| {
                    tracing::warn!(
                        reason,
                        "no writable cgroups: memory and processes are bounded by rlimits only"
                    );
                })
                .ok();
        }
        let Err(strict_failure) = sandbox.check().await else {
            return Ok(sandbox.finish_start());
        };
        if sandbox.config.profile == ProfileChoice::Auto {
            sandbox.profile = Profile::CloudRun;
            if sandbox.check().await.is_ok() {
                if sandbox.config.require > Profile::CloudRun {
                    return Err(StartError::ProfileTooWeak {
                        required: sandbox.config.require,
                        available: Profile::CloudRun,
                        reason: strict_failure,
                    });
                }
                tracing::warn!(
                    reason = strict_failure,
                    "THE STRICT PROFILE DOES NOT WORK ON THIS HOST: running the weaker `cloudrun` profile \
                     (no mount, pid or network namespace; see SECURITY.md). Set sandbox.require = \"strict\" \
                     to refuse to start instead."
                );
                return Ok(sandbox.finish_start());
            }
            // Neither works, so the fault is not the kernel's: stay on the stronger profile.
            sandbox.profile = Profile::Strict;
            sandbox.record(Err(strict_failure));
        }
        Ok(sandbox.finish_start())
    }

    /// Logs how the sandbox came up.
    fn finish_start(self) -> Self {
        let health = self
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .status
            .clone();
        match health {
            Ok(()) => {
                tracing::info!(
                    profile = self.profile.name(),
                    limits = ?self.limits_backend(),
                    cgroups = ?self.cgroup_parents(),
                    "sandbox ready"
                );
            }
            Err(reason) => tracing::error!(
                reason,
                "sandbox unavailable: /health answers 503 until it works"
            ),
        }
        self
    }

    /// Refuses new executions (and those waiting for a slot): the service is shutting down.
    pub fn stop_admitting(&self) {
        self.slots.close();
    }

    /// Stops every running execution; each answers 503 `shutting_down`.
    pub fn cancel_running(&self) {
        self.cancel.cancel();
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    fn limits_backend(&self) -> LimitsBackend {
        self.cgroups
            .as_ref()
            .map_or(LimitsBackend::Rlimits, Cgroups::backend)
    }

    /// Where per-execution cgroups are made (one directory per hierarchy); empty without
    /// cgroups. For the operator's log and for leak checks.
    pub fn cgroup_parents(&self) -> Vec<std::path::PathBuf> {
        self.cgroups
            .as_ref()
            .map(Cgroups::parents)
            .unwrap_or_default()
    }

    /// What the active profile guarantees on this host.
    pub fn isolation(&self) -> Isolation {
        self.profile.isolation(self.limits_backend())
    }

    /// A place for one execution, if the running and waiting ones leave room; never waits.
    /// Taken before a request's body is read, so a request that could not run costs nothing.
    pub fn admit(&self) -> Result<Ticket, SandboxError> {
        self.slots.admit().map_err(SandboxError::from)
    }

    /// Runs `script` in a fresh jail once a slot is free, and waits for it, at most the time
    /// limit.
    #[tracing::instrument(skip_all, fields(script_bytes = script.as_str().len()))]
    pub async fn execute(
        &self,
        ticket: Ticket,
        script: &Script,
    ) -> Result<Execution, SandboxError> {
        let mut slot = ticket.acquire().await?;
        slot.sweep_files = !self.profile.namespaced();
        let (workdir, cgroup) = self.prepare(slot.uid, script).await?;
        // From here the slot owns both: on every path its sweep removes them with the rest.
        let workdir_path = workdir.path().to_owned();
        slot.hold(workdir, cgroup);
        let cgroup_dirs = slot.cgroup().map(cgroup::Cgroup::dirs).unwrap_or_default();
        let cmd = command::build(&command::Run {
            config: &self.config,
            limits: &self.limits,
            profile: self.profile,
            workdir: &workdir_path,
            uid: slot.uid,
            cgroup_dirs,
        });
        let caps = Caps {
            stdout: self.limits.output_bytes,
            stderr: self.limits.output_bytes,
            result: self.limits.result_bytes + FRAME_OVERHEAD,
            log: LOG_CAP,
        };
        let finished = process::run(
            cmd,
            command::FDS,
            self.limits.time_limit(),
            caps,
            &self.cancel,
        )
        .await
        .map_err(|source| self.spawn_error(source))?;
        let usage = slot.release().await;
        let outcome = outcome::classify(&finished, self.profile, usage.oom_killed, &self.limits)?;
        Ok(Execution {
            outcome,
            output: outcome::output(finished),
            memory_peak_bytes: usage.memory_peak_bytes,
        })
    }

    /// Runs the canary script and records the result for [`Sandbox::health`].
    pub async fn check(&self) -> Result<(), String> {
        let canary =
            validate(CANARY.to_owned(), CANARY.len()).map_err(|error| error.to_string())?;
        let execution = match self.admit() {
            Ok(ticket) => self.execute(ticket, &canary).await,
            Err(error) => Err(error),
        };
        let status = match execution {
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
        self.record(status.clone());
        status
    }

    fn record(&self, status: Result<(), String>) {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = Health {
            status,
            checked: Instant::now(),
        };
    }

    /// Whether scripts can run: the last canary's result, plus a cheap check that nsjail, the
    /// interpreter and the profile are still there. A failure is re-checked at most every 10 s.
    pub async fn health(&self) -> Result<(), String> {
        let last = self
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match last.status {
            Ok(()) => self.files_present(),
            Err(_) if last.checked.elapsed() >= HEALTH_RETRY => self.check().await,
            Err(reason) => Err(reason),
        }
    }

    fn files_present(&self) -> Result<(), String> {
        let profile = self.config.profile_dir.join(self.profile.config_file());
        let files = [
            ("nsjail", &self.config.nsjail),
            ("the sandbox Python", &self.config.python),
            ("the jail profile", &profile),
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

    /// The execution's private directory and, where cgroups are writable, its cgroup: made on
    /// the blocking pool, since both are file-system work.
    async fn prepare(
        &self,
        uid: u32,
        script: &Script,
    ) -> Result<(tempfile::TempDir, Option<cgroup::Cgroup>), SandboxError> {
        let work_root = self.config.work_root.clone();
        let namespaced = self.profile.namespaced();
        let script = script.as_str().to_owned();
        let cgroups = self.cgroups.clone();
        let limits = self.limits.clone();
        blocking(move || {
            let workdir = workdir(&work_root, namespaced, uid, &script)?;
            let cgroup = cgroups
                .map(|cgroups| cgroups.create(&format!("run-{uid}"), &limits))
                .transpose()
                .map_err(|source| SandboxError::Internal {
                    context: "creating the execution's cgroup failed",
                    source,
                })?;
            Ok((workdir, cgroup))
        })
        .await?
    }
}

/// Runs file-system work on the blocking pool, so no async worker waits on a disk (or on a
/// directory tree a script built).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| SandboxError::Internal {
            context: "a blocking task of the sandbox failed",
            source: io::Error::other(error),
        })
}

/// The execution's private directory, readable only by root and the slot's gid: the harness
/// and the script, and (no mount namespace) a `tmp/` only the slot's uid can use.
fn workdir(
    work_root: &Path,
    namespaced: bool,
    uid: u32,
    script: &str,
) -> Result<tempfile::TempDir, SandboxError> {
    // A full disk is the host's condition, not a fault of ours: 503, and it may pass.
    let internal = |context| {
        move |source: io::Error| match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                SandboxError::Unavailable(format!(
                    "no space left for an execution's files in {}",
                    work_root.display()
                ))
            }
            _ => SandboxError::Internal { context, source },
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("pyexec-")
        .tempdir_in(work_root)
        .map_err(internal("creating the execution directory failed"))?;
    harness::install(dir.path(), script).map_err(internal("writing the script failed"))?;
    for file in [harness::HARNESS_FILE, harness::SCRIPT_FILE] {
        let path = dir.path().join(file);
        chown(&path, None, Some(uid))
            .map_err(internal("handing the script to the slot's gid failed"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))
            .map_err(internal("setting the script's mode failed"))?;
    }
    if !namespaced {
        let tmp = dir.path().join(command::TMP_DIR);
        std::fs::create_dir(&tmp).map_err(internal("creating the execution's tmp failed"))?;
        chown(&tmp, Some(uid), Some(uid)).map_err(internal(
            "handing the execution's tmp to the slot's uid failed",
        ))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(internal("setting the execution's tmp mode failed"))?;
    }
    chown(dir.path(), None, Some(uid))
        .map_err(internal("handing the directory to the slot's gid failed"))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750))
        .map_err(internal("setting the execution directory's mode failed"))?;
    Ok(dir)
}
