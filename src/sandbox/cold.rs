//! The cold launcher: nsjail with the harness, started for one execution alone. The job goes
//! in a memfd on descriptor 5, as on the warm path, and the harness is the instance's
//! installed copy, bound read-only (namespaced) or read in place: nothing is written for a run.

use std::io;
use std::os::fd::OwnedFd;

use super::documents::{HarnessSettings, JOB_FD};
use super::launch::{Jail, Launched, Run};
use super::{Sandbox, SandboxError, cgroup, command, process};

impl Sandbox {
    /// Starts the cold jail for `run`.
    pub(super) fn launch_cold(&self, run: &Run<'_>) -> Result<Launched, SandboxError> {
        let internal = |context| move |source| SandboxError::Internal { context, source };
        let limits = &run.job.limits;
        let cgroup_dirs = run
            .slot
            .cgroup()
            .map(cgroup::Cgroup::dirs)
            .unwrap_or_default();
        let settings = HarnessSettings::new(limits, !cgroup_dirs.is_empty(), Some(&self.seccomp));
        let settings = serde_json::to_string(&settings)
            .map_err(|error| internal("encoding the settings failed")(io::Error::other(error)))?;
        let job = serde_json::to_vec(&run.job.to_harness())
            .map_err(|error| internal("encoding the job failed")(io::Error::other(error)))?;
        let job = super::zygote::memfd("pyexec-job", &job)
            .map_err(internal("writing the job to a memfd failed"))?;
        let harness_dir = self.harness_dir().ok_or_else(|| {
            SandboxError::Unavailable("the sandbox has not been started".to_owned())
        })?;
        let cmd = command::build(&command::Run {
            config: &self.config,
            limits,
            profile: run.profile,
            workdir: run.workdir,
            harness_dir: &harness_dir,
            uid: run.slot.uid,
            inner_uid: command::inner_uid(&self.slots.uids(), run.slot.uid),
            cgroup_dirs,
            python: command::Python::Harness(&settings),
            masks: &self.masks,
        });
        self.spawn(cmd, vec![(job, JOB_FD)])
    }

    /// Spawns a cold jail's command with `inherit` as extra descriptors.
    pub(super) fn spawn(
        &self,
        cmd: tokio::process::Command,
        inherit: Vec<(OwnedFd, i32)>,
    ) -> Result<Launched, SandboxError> {
        let (spawned, pipes, started) = process::spawn(cmd, command::FDS, inherit)
            .map_err(|source| self.spawn_error(source))?;
        Ok(Launched {
            jail: Jail::Cold(spawned),
            pipes,
            started,
        })
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
}
