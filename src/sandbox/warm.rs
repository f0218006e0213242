//! The warm launcher: a child of the zygote (`zygote.rs`, supervised by `supervisor.rs`), put
//! in the execution's cgroup before it does anything, told how to jail itself in one memfd and
//! given the job in another. Anything that keeps it from starting is a [`NotStarted`]: the
//! execution then goes cold.

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::documents::{HarnessSettings, WarmJail, ZygoteFilters, ZygoteInit};
use super::launch::{Jail, Launched, NotStarted, Run};
use super::supervisor::{Share, ZygoteSupervisor};
use super::zygote::Zygote;
use super::{Sandbox, command, hex_filters, process, seccomp};
use crate::config::Profile;

impl Sandbox {
    /// The zygote for executions in `profile`, and how many executions it may serve, if the
    /// warm path is on and a zygote runs that has not served its share.
    pub(super) fn zygote(&self, profile: Profile) -> Option<(Arc<Zygote>, Share)> {
        let warm = self.warm_path().filter(|warm| warm.profile() == profile)?;
        warm.zygote().map(|zygote| (zygote, warm.share()))
    }

    /// The warm path's supervisor, once started.
    pub(super) fn warm_path(&self) -> Option<Arc<ZygoteSupervisor>> {
        self.warm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A child of `zygote` for `run`, let go once it is in the slot's cgroup.
    pub(super) async fn launch_warm(
        &self,
        run: &Run<'_>,
        zygote: &Arc<Zygote>,
        share: Share,
    ) -> Result<Launched, NotStarted> {
        let failed = |error: std::io::Error| NotStarted(error.to_string());
        let (stdout, stdout_writer) = process::pipe().map_err(failed)?;
        let (stderr, stderr_writer) = process::pipe().map_err(failed)?;
        let (result, result_writer) = process::pipe().map_err(failed)?;
        let (cwd, _) = command::jail_paths(run.profile, run.workdir);
        let env = command::script_env(run.profile, run.workdir)
            .into_iter()
            .map(|(name, value)| (name, value.to_string_lossy().into_owned()))
            .collect();
        let uid = if run.profile.namespaced() {
            command::inner_uid(&self.slots.uids(), run.slot.uid)
        } else {
            run.slot.uid
        };
        let limits = &run.job.limits;
        let unencodable = |error: serde_json::Error| NotStarted(format!("the job: {error}"));
        let jail = serde_json::to_vec(&WarmJail {
            uid,
            cwd: &cwd,
            tmp_bytes: limits.tmp_bytes,
            env,
            settings: HarnessSettings::new(limits, run.slot.cgroup().is_some(), None),
        })
        .map_err(unencodable)?;
        let job = serde_json::to_vec(&run.job.to_harness()).map_err(unencodable)?;
        let started = Instant::now();
        let mut forked = zygote
            .fork(
                share,
                &jail,
                &job,
                [stdout_writer, stderr_writer, result_writer],
            )
            .await
            .map_err(|unavailable| NotStarted(unavailable.to_string()))?;
        if let Some(cgroup) = run.slot.cgroup() {
            cgroup.join(forked.pid()).map_err(failed)?;
        }
        forked.go().map_err(failed)?;
        Ok(Launched {
            jail: Jail::Warm(forked),
            pipes: process::Pipes {
                stdout,
                stderr,
                result,
                log: None,
            },
            started,
        })
    }

    /// Starts the warm path and proves it with the canary; it stays off if either fails (and
    /// the caller says why).
    pub(super) async fn start_warm(&self) -> Result<(), String> {
        let (Some(block), Some(harness_dir)) = (&self.block, self.harness_dir()) else {
            return Err("the sandbox has not been started".to_owned());
        };
        let profile = self.profile();
        let masks = if profile.namespaced() {
            self.masks
                .iter()
                .filter_map(|mask| {
                    let name = mask.source.file_name()?;
                    let source = Path::new(command::JAIL_MASKS).join(name);
                    Some((source, mask.target.clone()))
                })
                .collect()
        } else {
            Vec::new()
        };
        let init = serde_json::to_vec(&ZygoteInit {
            namespaces: profile.namespaced(),
            preload: &self.config.preload,
            seccomp: ZygoteFilters {
                zygote: hex_filters(seccomp::Subject::Zygote),
                script: &self.seccomp,
            },
            masks,
        })
        .map_err(|error| format!("the zygote's init: {error}"))?;
        let share = Share {
            executions: self.config.zygote_max_executions,
            age: Duration::from_secs(self.config.zygote_max_age_secs),
        };
        let warm = Arc::new(ZygoteSupervisor::new(
            self.config.clone(),
            profile,
            harness_dir,
            (block.uids().end - 1, self.slots.uids()),
            init,
            share,
        ));
        warm.start().await?;
        *self.warm.lock().unwrap_or_else(PoisonError::into_inner) = Some(warm);
        match self.canary(Some(super::RunPath::Warm)).await {
            Ok(()) => Ok(()),
            Err(reason) => {
                *self.warm.lock().unwrap_or_else(PoisonError::into_inner) = None;
                self.record(Ok(()));
                Err(format!("the canary failed on the warm path: {reason}"))
            }
        }
    }
}
