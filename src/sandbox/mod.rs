//! Runs validated scripts in nsjail: one fresh jail, one slot (a host uid of its own) and,
//! where the host allows, one cgroup per execution. At start-up it finds out what this kernel
//! allows and picks the strongest profile that works (`startup.rs`). Each execution is
//! launched one of two ways, warm (`warm.rs`: a child of the zygote) or cold (`cold.rs`: a
//! jail of its own), then supervised and classified the same way (`launch.rs`, `outcome.rs`).
//! A script that fails is an [`Outcome`], not an error; [`SandboxError`] is only for the
//! sandbox itself failing.

#[doc(hidden)]
pub mod bench;
mod block;
mod cgroup;
mod cleanup;
mod cold;
mod command;
mod documents;
mod launch;
mod live;
mod masks;
mod outcome;
mod packages;
mod phases;
mod process;
mod profile;
mod recheck;
mod seccomp;
mod slots;
mod startup;
mod supervisor;
mod warm;
mod watchdog;
mod workdir;
mod zygote;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use launch::RunPath;
pub use live::{Event, Events, Live, Stream};
pub use outcome::{Execution, Outcome};
pub use packages::{Installed, normalized as package_name};
pub use slots::Ticket;
pub use startup::{ProfileFailure, StartError, WarmState};

use crate::config::{Limits, Profile, ProfileChoice, SandboxConfig};
use crate::job::Job;
use crate::protocol::{Isolation, LimitsBackend};
use crate::validate::validate;
use block::Block;
use cgroup::Cgroups;
use launch::{Launched, NotStarted, Ran};
use phases::Phases;
use process::{Caps, Finished, Watch};
use profile::ActiveProfile;
use slots::{Refused, Slot, Slots};
use startup::{Choice, Health};
use supervisor::ZygoteSupervisor;
use tokio_util::sync::CancellationToken;

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
    warm: Mutex<Option<Arc<ZygoteSupervisor>>>,
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
    /// A sandbox that has probed nothing and run nothing: unhealthy until [`Sandbox::start`],
    /// and every execution answers `Unavailable`. Enough for what needs no jail (routing,
    /// request parsing).
    pub fn new(mut config: SandboxConfig, limits: Limits) -> Self {
        // Relative paths must not depend on the directory a jail starts in.
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

    /// Where this instance keeps its own files and makes its execution directories, once
    /// started.
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
    /// Taken once the request's body is in, so the requests held in memory never exceed the
    /// slots plus the queue.
    pub fn admit(&self) -> Result<Ticket, SandboxError> {
        self.slots.admit().map_err(SandboxError::from)
    }

    /// Runs `job` in a fresh jail once a slot is free ([`Sandbox::acquire`], then
    /// [`Sandbox::run`]).
    pub async fn execute(&self, ticket: Ticket, job: &Job) -> Result<Execution, SandboxError> {
        let acquired = self.acquire(ticket).await?;
        self.run(acquired, job, None).await
    }

    /// A slot for the ticket's execution, now or once one frees up within the queue timeout:
    /// the last point where the execution can be refused without a sandbox spent on it.
    pub async fn acquire(&self, ticket: Ticket) -> Result<Acquired, SandboxError> {
        if self.block.is_none() {
            return Err(SandboxError::Unavailable(
                "the sandbox has not been started".to_owned(),
            ));
        }
        let begun = Instant::now();
        let slot = ticket.acquire().await?;
        Ok(Acquired {
            slot,
            queue_wait: begun.elapsed(),
        })
    }

    /// Runs `job` in a fresh jail in the acquired slot, and waits for it, at most its time
    /// limit: warm where a zygote can fork it, else cold, and cold again if and only if the
    /// warm child never said `started` (no user code ran, so nothing can run twice). What the
    /// script writes goes to `live` as it is read, where there is one. The answer does not
    /// wait for the teardown where nothing of the execution is visible to another: the slot
    /// keeps its place (and so counts in admission) until its sweep is done.
    #[tracing::instrument(skip_all, fields(script_bytes = job.script.as_str().len()))]
    pub async fn run(
        &self,
        acquired: Acquired,
        job: &Job,
        live: Option<&Live>,
    ) -> Result<Execution, SandboxError> {
        let Some(block) = &self.block else {
            return Err(SandboxError::Unavailable(
                "the sandbox has not been started".to_owned(),
            ));
        };
        let Acquired {
            mut slot,
            queue_wait,
        } = acquired;
        let mut phases = Phases {
            queue: queue_wait,
            ..Phases::default()
        };
        let profile = self.profile();
        slot.sweep_files = !profile.namespaced();
        let prepared = self
            .prepare(block.work_dir(), profile, slot.uid, &job.limits)
            .await?;
        (phases.workdir, phases.cgroup) = (prepared.workdir_took, prepared.cgroup_took);
        let workdir = prepared.workdir.clone();
        // From here the slot owns both: on every path its sweep removes them with the rest.
        slot.hold(prepared.workdir, prepared.cgroup);
        // Without a cgroup, memory is bounded per process only: watch the execution as a whole.
        let watchdog = self.cgroups.is_none().then(|| {
            // Without a mount namespace, what it writes to disk is host memory too.
            let dirs = match &workdir {
                Some(workdir) if !profile.namespaced() => {
                    std::iter::once(workdir.join(command::TMP_DIR))
                        .chain(cleanup::SHARED_TMP.iter().map(PathBuf::from))
                        .collect()
                }
                _ => Vec::new(),
            };
            watchdog::Watchdog::start(slot.uid, dirs, job.limits.memory_bytes)
        });
        let run = launch::Run {
            profile,
            slot: &slot,
            workdir: workdir.as_deref(),
            job,
        };
        let (finished, path, cold_because) = self.run_on_a_path(&run, job, live).await?;
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
        // nsjail supervises (and logs the script's exit) only a cold namespaced jail.
        let nsjail_log = path == RunPath::Cold && profile.namespaced();
        let mut outcome = outcome::classify(
            &finished,
            nsjail_log,
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
            cold_because,
            queue_wait: phases.queue,
        })
    }

    /// Runs `run` warm where a zygote can fork it, else cold, and cold again if and only if
    /// the warm child never said `started`: no user code ran, so nothing can run twice.
    /// Returns what ran, where, and why it was not warm.
    async fn run_on_a_path(
        &self,
        run: &launch::Run<'_>,
        job: &Job,
        live: Option<&Live>,
    ) -> Result<(Finished, RunPath, Option<String>), SandboxError> {
        let warm = match self.zygote(run.profile) {
            Some((zygote, share)) => self.launch_warm(run, &zygote, share).await,
            None => Err(NotStarted("the warm path is off".to_owned())),
        };
        let reason = match warm {
            Ok(launched) => match self.supervise(launched, job, live).await? {
                Ran::Started(finished) => return Ok((*finished, RunPath::Warm, None)),
                // The zygote forked, yet its child failed before the harness: the sandbox's
                // fault, worth an operator's eye, though the execution goes on cold.
                Ran::NotStarted(NotStarted(reason)) => {
                    tracing::warn!(
                        reason,
                        "a warm child failed before it started; running cold"
                    );
                    reason
                }
            },
            Err(NotStarted(reason)) => reason,
        };
        tracing::debug!(reason, "running cold");
        match self.supervise(self.launch_cold(run)?, job, live).await? {
            Ran::Started(finished) => Ok((*finished, RunPath::Cold, Some(reason))),
            Ran::NotStarted(NotStarted(reason)) => Err(SandboxError::Unavailable(reason)),
        }
    }

    /// Supervises a launched jail to its end under the job's limits, passing its output on to
    /// `live` once it counts: once the harness started, or once the attempt is the answer.
    async fn supervise(
        &self,
        launched: Launched,
        job: &Job,
        live: Option<&Live>,
    ) -> Result<Ran, SandboxError> {
        let attempt = live.map(live::Attempt::new);
        let ran = launched
            .supervise(Watch {
                deadline: job.limits.time_limit(),
                caps: Self::caps(&job.limits),
                cancel: &self.cancel,
                tap: attempt.as_ref().map(|attempt| attempt as &dyn process::Tap),
            })
            .await?;
        if let (Some(attempt), Ran::Started(_)) = (&attempt, &ran) {
            attempt.open();
        }
        Ok(ran)
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

    /// Runs one of the service's own scripts (the canary, the package list) as an execution
    /// like any other, under the configured limits.
    async fn run_own(&self, source: &str) -> Result<Execution, SandboxError> {
        let script = validate(source.to_owned(), source.len())
            .map_err(|error| SandboxError::Unavailable(error.to_string()))?;
        let ticket = self.admit()?;
        self.execute(ticket, &Job::script_only(script, self.limits.clone()))
            .await
    }

    /// Where the instance keeps the Python it runs (`harness/`), once started.
    fn harness_dir(&self) -> Option<PathBuf> {
        self.work_dir().map(|dir| dir.join(startup::HARNESS_DIR))
    }
}

/// A slot taken for one execution, and how long the request waited for it.
#[derive(Debug)]
pub struct Acquired {
    slot: Slot,
    queue_wait: Duration,
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
