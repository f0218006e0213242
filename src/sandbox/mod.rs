//! Runs validated scripts in nsjail: one fresh jail, one private directory, one slot (a host
//! uid of its own) and, where the host allows, one cgroup per execution. At start-up it finds
//! out what this kernel allows and picks the strongest profile that works. A script that fails
//! is an [`Outcome`], not an error; [`SandboxError`] is only for the sandbox itself failing.

mod block;
mod cgroup;
mod cleanup;
mod command;
mod masks;
mod outcome;
mod packages;
mod phases;
mod process;
mod profile;
mod seccomp;
mod slots;
mod startup;
mod watchdog;
mod zygote;

use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use outcome::{Execution, Outcome};
pub use packages::{Installed, Package, normalized as package_name};
pub use profile::{Isolation, LimitsBackend};
pub use slots::Ticket;
pub use startup::{ProfileFailure, StartError, WarmState};

use crate::config::{Limits, Profile, ProfileChoice, SandboxConfig};
use crate::harness;
use crate::job::Job;
use crate::validate::validate;
use block::Block;
use cgroup::Cgroups;
use phases::Phases;
use process::{Caps, Finished};
use profile::ActiveProfile;
use slots::{Refused, Slot, Slots};
use startup::{CANARY, Choice, Health};
use tokio_util::sync::CancellationToken;
use zygote::{Warm, Zygote};

/// nsjail's log is a few lines; more than this is noise.
const LOG_CAP: usize = 64 * 1024;
/// Room for a frame beyond the result limit: a failure's capped texts, at worst six bytes a
/// character (see the harness's MAX_* bounds), and the envelope.
const FRAME_OVERHEAD: usize = 1024 * 1024;
/// Room in the final frame for one returned file's path, size and encoding.
const FILE_ENTRY_OVERHEAD: u64 = 2048;

/// Runs scripts; shared by every request.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    limits: Limits,
    /// Where the configured profiles are; the jails read the instance's copy of them.
    profiles_from: PathBuf,
    profile: ActiveProfile,
    cgroups: Option<Cgroups>,
    /// The uids, cgroup subtree and work directory this instance owns; none until started.
    block: Option<Block>,
    slots: Arc<Slots>,
    health: Mutex<Health>,
    /// One health re-check at a time.
    rechecking: tokio::sync::Mutex<()>,
    /// What start-up chose, and why not better.
    choice: Mutex<Choice>,
    /// Fired when the shutdown grace is over: every running and queued execution stops.
    cancel: CancellationToken,
    /// Numbers execution directories.
    executions: AtomicU64,
    /// The seccomp filters every script gets, compiled once, hex-encoded for the harness.
    seccomp: Vec<String>,
    /// What covers the host-wide `/proc` counters in a namespaced jail (`masks.rs`).
    masks: Vec<masks::Mask>,
    /// The warm path, where it is on and started.
    warm: Mutex<Option<Arc<Warm>>>,
    /// What the sandbox Python has installed, read once it works (`packages.rs`).
    installed: Mutex<Arc<Installed>>,
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

impl Sandbox {
    /// A sandbox that has probed nothing and run nothing: unhealthy until [`Sandbox::start`].
    /// Enough for what needs no jail (routing, request parsing).
    pub fn new(mut config: SandboxConfig, limits: Limits) -> Self {
        // nsjail runs in the execution's directory: relative paths must not depend on it.
        if let Ok(dir) = std::path::absolute(&config.profile_dir) {
            config.profile_dir = dir;
        }
        let cancel = CancellationToken::new();
        let slots = Self::slots(&config, config.uid_base, cancel.clone());
        let profile = match config.profile {
            ProfileChoice::Auto | ProfileChoice::Strict => Profile::Strict,
            ProfileChoice::CloudRun => Profile::CloudRun,
        };
        Self {
            profiles_from: config.profile_dir.clone(),
            config,
            limits,
            profile: ActiveProfile::new(profile),
            cgroups: None,
            block: None,
            slots,
            health: Mutex::new(Health {
                status: Err("the sandbox has not been started".to_owned()),
                checked: Instant::now(),
            }),
            rechecking: tokio::sync::Mutex::new(()),
            choice: Mutex::new(Choice::default()),
            cancel,
            executions: AtomicU64::new(0),
            seccomp: hex_filters(seccomp::Subject::Script),
            masks: Vec::new(),
            warm: Mutex::new(None),
            installed: Mutex::new(Arc::default()),
        }
    }

    fn slots(config: &SandboxConfig, first_uid: u32, cancel: CancellationToken) -> Arc<Slots> {
        let count = u32::try_from(config.concurrency()).unwrap_or(block::BLOCK_UIDS);
        Slots::new(
            first_uid..first_uid + count.min(block::BLOCK_UIDS),
            config.max_queue,
            Duration::from_millis(config.queue_timeout_ms),
            cancel,
        )
    }

    /// Refuses new executions: the service is shutting down. Those already queued keep their
    /// place and run if a slot frees up in time.
    pub fn stop_admitting(&self) {
        self.slots.close();
    }

    /// Stops every running and queued execution; each answers 503 `shutting_down`.
    pub fn cancel_running(&self) {
        self.cancel.cancel();
    }

    /// Completes once every execution has run and been swept (teardown follows the answer).
    pub async fn idle(&self) {
        self.slots.idle().await;
    }

    /// Sandboxes in use (running or being swept) and requests waiting for one, now.
    pub fn load(&self) -> (usize, usize) {
        self.slots.load()
    }

    /// Whether executions run on the warm path now.
    pub fn is_warm(&self) -> bool {
        self.zygote(self.profile()).is_some()
    }

    /// The uids this instance's executions run as.
    pub fn slot_uids(&self) -> std::ops::Range<u32> {
        self.slots.uids()
    }

    /// Where this instance makes its execution directories (its own), once started.
    pub fn work_dir(&self) -> Option<&Path> {
        self.block.as_ref().map(Block::work_dir)
    }

    /// The profile executions start in now.
    pub fn profile(&self) -> Profile {
        self.profile.get()
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

    /// The sandbox Python's version and packages, as read once it worked; empty until then.
    pub fn installed(&self) -> Arc<Installed> {
        Arc::clone(
            &self
                .installed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// What the active profile guarantees on this host.
    pub fn isolation(&self) -> Isolation {
        self.profile().isolation(self.limits_backend())
    }

    /// A place for one execution, if the running and waiting ones leave room; never waits.
    /// Taken before a request's body is read, so a request that could not run costs nothing.
    pub fn admit(&self) -> Result<Ticket, SandboxError> {
        self.slots.admit().map_err(SandboxError::from)
    }

    /// Runs `job` in a fresh jail once a slot is free, and waits for it, at most its time
    /// limit. The answer does not wait for the teardown: the slot keeps its place (and so
    /// counts in admission) until its sweep is done, in the background.
    #[tracing::instrument(skip_all, fields(script_bytes = job.script.as_str().len()))]
    pub async fn execute(&self, ticket: Ticket, job: &Job) -> Result<Execution, SandboxError> {
        if self.block.is_none() {
            return Err(SandboxError::Unavailable(
                "the sandbox has not been started".to_owned(),
            ));
        }
        let begun = Instant::now();
        let mut slot = ticket.acquire().await?;
        let mut phases = Phases {
            queue: begun.elapsed(),
            ..Phases::default()
        };
        let profile = self.profile();
        slot.sweep_files = !profile.namespaced();
        let prepared = self.prepare(profile, slot.uid, job).await?;
        (phases.workdir, phases.cgroup) = (prepared.workdir_took, prepared.cgroup_took);
        let workdir = prepared.workdir;
        // From here the slot owns both: on every path its sweep removes them with the rest.
        slot.hold(workdir.clone(), prepared.cgroup);
        // Without a cgroup, memory is bounded per process only: watch the execution as a whole.
        let watchdog = self.cgroups.is_none().then(|| {
            let mut dirs = Vec::new();
            if !profile.namespaced() {
                dirs.push(workdir.join(command::TMP_DIR));
                dirs.extend(cleanup::SHARED_TMP.iter().map(PathBuf::from));
            }
            watchdog::Watchdog::start(slot.uid, dirs, job.limits.memory_bytes)
        });
        let warm = match self.zygote(profile) {
            Some((zygote, share)) => {
                self.run_warm(profile, (&zygote, share), &slot, &workdir, job)
                    .await
            }
            None => Err(zygote::Unavailable("the warm path is off".to_owned())),
        };
        let (finished, path) = match warm {
            Ok(finished) => (finished, "warm"),
            Err(unavailable) => {
                tracing::debug!(reason = %unavailable, "running cold");
                (self.run_cold(profile, &slot, &workdir, job).await?, "cold")
            }
        };
        phases.set_run(
            finished.spawned_at,
            finished.result.first_at,
            finished.result.last_at,
            finished.spawned_at + finished.elapsed,
        );
        let over_memory = match watchdog {
            Some(watchdog) => watchdog.stop().await,
            None => false,
        };
        // Two small reads of the kernel's in-memory cgroup files, before the group goes.
        let usage = slot.cgroup().map(cgroup::Cgroup::usage).unwrap_or_default();
        // A namespaced jail leaves nothing any other execution could see: its sweep can follow
        // the answer. Without namespaces, what it left in the shared temp directories must be
        // gone before anyone learns it ended.
        if profile.namespaced() {
            slot.release_later(phases, path);
        } else {
            slot.release_now(phases, path).await;
        }
        let mut outcome = outcome::classify(
            &finished,
            profile,
            usage.oom_killed || over_memory,
            &job.limits,
        )?;
        // A frame the script forged may carry files nobody asked for: they are not answered.
        if let Outcome::Returned(returned) = &mut outcome
            && job.return_files == crate::protocol::ReturnFiles::All(false)
        {
            returned.files = None;
            returned.files_truncated = false;
            returned.skipped_files.clear();
        }
        Ok(Execution {
            outcome,
            output: outcome::output(finished),
            memory_peak_bytes: usage.memory_peak_bytes,
            profile,
            path,
            queue_wait: phases.queue,
        })
    }

    /// What is read of an execution's output: its stdout and stderr caps, and room for the
    /// largest final frame (the result, the files in base64 or escaped text, their paths).
    fn caps(limits: &Limits) -> Caps {
        let files = limits.output_files_bytes.saturating_mul(2)
            + u64::try_from(limits.output_files).unwrap_or(u64::MAX) * FILE_ENTRY_OVERHEAD;
        Caps {
            stdout: limits.output_bytes,
            stderr: limits.output_bytes,
            result: limits.result_bytes
                + FRAME_OVERHEAD
                + usize::try_from(files).unwrap_or(usize::MAX),
            log: LOG_CAP,
        }
    }

    /// A cold jail: nsjail with the harness, started for this execution alone.
    async fn run_cold(
        &self,
        profile: Profile,
        slot: &Slot,
        workdir: &Path,
        job: &Job,
    ) -> Result<Finished, SandboxError> {
        let limits = &job.limits;
        let harness_job =
            serde_json::to_vec(&job.to_harness()).map_err(|error| SandboxError::Internal {
                context: "encoding the job failed",
                source: io::Error::other(error),
            })?;
        let (dir, uid) = (workdir.to_owned(), slot.uid);
        blocking(move || install_cold(&dir, uid, &harness_job)).await??;
        let cmd = command::build(&command::Run {
            config: &self.config,
            limits,
            profile,
            workdir,
            uid: slot.uid,
            cgroup_dirs: slot.cgroup().map(cgroup::Cgroup::dirs).unwrap_or_default(),
            python_args: None,
            seccomp: &self.seccomp,
            masks: &self.masks,
        });
        let time_limit = limits.time_limit();
        process::run(
            cmd,
            command::FDS,
            time_limit,
            Self::caps(limits),
            &self.cancel,
        )
        .await
        .map_err(|source| self.spawn_error(source))
    }

    /// A child of the zygote, in the slot's cgroup before it does anything; `Unavailable` when
    /// the zygote could not give one (the execution then goes cold).
    async fn run_warm(
        &self,
        profile: Profile,
        (zygote, share): (&Arc<Zygote>, zygote::Share),
        slot: &Slot,
        workdir: &Path,
        job: &Job,
    ) -> Result<Finished, zygote::Unavailable> {
        let unavailable = |error: io::Error| zygote::Unavailable(error.to_string());
        let (stdout, stdout_writer) = process::pipe().map_err(unavailable)?;
        let (stderr, stderr_writer) = process::pipe().map_err(unavailable)?;
        let (result, result_writer) = process::pipe().map_err(unavailable)?;
        let (cwd, _) = command::jail_paths(profile, workdir);
        let env: serde_json::Map<String, serde_json::Value> = command::script_env(profile, workdir)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_string_lossy().into()))
            .collect();
        let uid = if profile.namespaced() {
            slot.uid - self.slots.uids().start + 1
        } else {
            slot.uid
        };
        let limits = &job.limits;
        let unencodable =
            |error: serde_json::Error| zygote::Unavailable(format!("the job: {error}"));
        let jail = serde_json::to_vec(&WarmJail {
            uid,
            cwd: &cwd,
            tmp_bytes: limits.tmp_bytes,
            env,
            settings: command::settings(limits, slot.cgroup().is_some()),
        })
        .map_err(unencodable)?;
        let harness_job = serde_json::to_vec(&job.to_harness()).map_err(unencodable)?;
        let started = Instant::now();
        let mut forked = zygote
            .fork(
                share,
                &jail,
                &harness_job,
                [stdout_writer, stderr_writer, result_writer],
            )
            .await?;
        if let Some(cgroup) = slot.cgroup() {
            cgroup.join(forked.pid()).map_err(unavailable)?;
        }
        forked.go().map_err(unavailable)?;
        let pipes = process::Pipes {
            stdout,
            stderr,
            result,
            log: None,
        };
        process::supervise(
            &mut forked,
            pipes,
            started,
            limits.time_limit(),
            Self::caps(limits),
            &self.cancel,
        )
        .await
        .map_err(unavailable)
    }

    /// The zygote for executions in `profile`, and how many executions it may serve, if the
    /// warm path is on and a zygote runs that has not served its share.
    fn zygote(&self, profile: Profile) -> Option<(Arc<Zygote>, zygote::Share)> {
        let warm = self.warm_path().filter(|warm| warm.profile() == profile)?;
        warm.zygote().map(|zygote| (zygote, warm.share()))
    }

    /// The warm path, once started.
    fn warm_path(&self) -> Option<Arc<Warm>> {
        self.warm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The benchmark's baseline: a cold jail with exactly an execution's flags, slot, directory
    /// and cgroup, running the sandbox's Python with `python_args` instead of the harness. How
    /// long the jail took, from spawn to exit; an error if it did not exit 0.
    pub async fn baseline(&self, python_args: &[&str]) -> Result<Duration, SandboxError> {
        let mut slot = self.admit()?.acquire().await?;
        let profile = self.profile();
        let nothing = validate(CANARY.to_owned(), CANARY.len())
            .map_err(|error| SandboxError::Unavailable(error.to_string()))?;
        let prepared = self
            .prepare(
                profile,
                slot.uid,
                &Job::script_only(nothing, self.limits.clone()),
            )
            .await?;
        let workdir = prepared.workdir;
        slot.hold(workdir.clone(), prepared.cgroup);
        let cmd = command::build(&command::Run {
            config: &self.config,
            limits: &self.limits,
            profile,
            workdir: &workdir,
            uid: slot.uid,
            cgroup_dirs: slot.cgroup().map(cgroup::Cgroup::dirs).unwrap_or_default(),
            python_args: Some(python_args),
            seccomp: &self.seccomp,
            masks: &self.masks,
        });
        let caps = Caps {
            stdout: LOG_CAP,
            stderr: LOG_CAP,
            result: LOG_CAP,
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
        match finished.ended {
            process::Ended::Exited(status) if status.success() => Ok(finished.elapsed),
            _ => Err(SandboxError::Unavailable(format!(
                "the baseline jail failed: {}",
                String::from_utf8_lossy(&finished.stderr.bytes)
            ))),
        }
    }

    /// Runs one of the service's own scripts (the canary, the package list) as an execution
    /// like any other, under the configured limits.
    async fn run_own(&self, source: &str) -> Result<Execution, SandboxError> {
        let script = validate(source.to_owned(), source.len())
            .map_err(|error| SandboxError::Unavailable(error.to_string()))?;
        let ticket = self.admit()?;
        self.execute(ticket, &Job::script_only(script, self.limits.clone()))
            .await
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
        profile: Profile,
        uid: u32,
        job: &Job,
    ) -> Result<Prepared, SandboxError> {
        let parent = self.block.as_ref().map_or_else(
            || self.config.work_root.clone(),
            |block| block.work_dir().to_owned(),
        );
        let number = self.executions.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("run-{uid}-{number}"));
        let namespaced = profile.namespaced();
        let cgroups = self.cgroups.clone();
        let limits = job.limits.clone();
        blocking(move || {
            let started = Instant::now();
            if let Err(error) = workdir(&dir, namespaced, uid) {
                cleanup::remove_or_quarantine(&dir);
                return Err(error);
            }
            let workdir_took = started.elapsed();
            let cgroup = cgroups
                .map(|cgroups| cgroups.create(&format!("run-{uid}"), &limits))
                .transpose()
                .map_err(|source| {
                    cleanup::remove_or_quarantine(&dir);
                    SandboxError::Internal {
                        context: "creating the execution's cgroup failed",
                        source,
                    }
                })?;
            Ok(Prepared {
                workdir: dir,
                cgroup,
                workdir_took,
                cgroup_took: started.elapsed().saturating_sub(workdir_took),
            })
        })
        .await?
    }
}

/// What the zygote's child reads from its first memfd (`zygote.py`), before anything else:
/// how to make itself the execution's jail. The job comes in a second memfd, read only once
/// the harness has said `started`.
#[derive(serde::Serialize)]
struct WarmJail<'a> {
    uid: u32,
    cwd: &'a Path,
    tmp_bytes: u64,
    env: serde_json::Map<String, serde_json::Value>,
    settings: serde_json::Value,
}

/// An execution's directory and cgroup, and how long each took to make.
struct Prepared {
    workdir: PathBuf,
    cgroup: Option<cgroup::Cgroup>,
    workdir_took: Duration,
    cgroup_took: Duration,
}

/// The seccomp filters for `subject`, hex-encoded for the harness.
fn hex_filters(subject: seccomp::Subject) -> Vec<String> {
    seccomp::filters(subject)
        .iter()
        .map(|program| hex(program))
        .collect()
}

/// Lower-case hexadecimal, which the harness reads with `bytes.fromhex`.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            use std::fmt::Write as _;
            let _ = write!(text, "{byte:02x}");
            text
        })
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

/// Makes `dir`, the execution's private directory, readable only by root and the slot's gid
/// (a cold run's harness and job go there), and (no mount namespace) a `tmp/` only the slot's
/// uid can use.
fn workdir(dir: &Path, namespaced: bool, uid: u32) -> Result<(), SandboxError> {
    let internal = |context| move |source| io_error(dir, context, source);
    std::fs::create_dir(dir).map_err(internal("creating the execution directory failed"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(internal("setting the execution directory's mode failed"))?;
    if !namespaced {
        let tmp = dir.join(command::TMP_DIR);
        std::fs::create_dir(&tmp).map_err(internal("creating the execution's tmp failed"))?;
        chown(&tmp, Some(uid), Some(uid)).map_err(internal(
            "handing the execution's tmp to the slot's uid failed",
        ))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(internal("setting the execution's tmp mode failed"))?;
    }
    chown(dir, None, Some(uid))
        .map_err(internal("handing the directory to the slot's gid failed"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(internal("setting the execution directory's mode failed"))?;
    Ok(())
}

/// Writes the harness and the job into a cold execution's directory, readable by root and the
/// slot's gid only. The warm path needs neither (its job goes in a memfd), so only a cold run
/// pays for writing the job (and its files) to disk.
fn install_cold(dir: &Path, uid: u32, job: &[u8]) -> Result<(), SandboxError> {
    let internal = |context| move |source| io_error(dir, context, source);
    harness::install(dir, job).map_err(internal("writing the job failed"))?;
    for file in [harness::HARNESS_FILE, harness::JOB_FILE] {
        let path = dir.join(file);
        chown(&path, None, Some(uid))
            .map_err(internal("handing the job to the slot's gid failed"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))
            .map_err(internal("setting the job's mode failed"))?;
    }
    Ok(())
}

/// A file-system error about an execution's directory `dir`, as the sandbox's: a full disk
/// is the host's condition, not a fault of ours (503, and it may pass); anything else is
/// internal.
fn io_error(dir: &Path, context: &'static str, source: io::Error) -> SandboxError {
    match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            SandboxError::Unavailable(format!(
                "no space left for an execution's files in {}",
                dir.parent().unwrap_or(dir).display()
            ))
        }
        _ => SandboxError::Internal { context, source },
    }
}
