//! Start-up and health: what this host allows (cgroups that hold their limits, then the
//! strongest profile whose canary runs), the warm path, and whether scripts can run now.
//!
//! The choice is made by doing: each candidate profile runs the canary, a real execution. For
//! `auto` the candidates are `strict` then `cloudrun`; a profile that works is used even when
//! the stronger one failed first, every failure is kept with its reason (the log and `/health`
//! say them all), and when none works the health check tries them all again, so a sandbox
//! that recovers (a slow first start, a file put back) takes the strongest profile that works
//! then, warm path included.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::block::Block;
use super::cgroup::Cgroups;
use super::{Execution, Outcome, RunPath, Sandbox, SandboxError, blocking, masks, packages};
use crate::config::{Limits, Profile, ProfileChoice, SandboxConfig};
use crate::harness;

/// A failed health check is retried at most this often.
const HEALTH_RETRY: Duration = Duration::from_secs(10);
/// The canary run at start-up and by the health check: interpreter, harness and jail.
pub(super) const CANARY: &str = "def main():\n    return 'ok'\n";
/// Where an instance keeps the profiles its jails read, in its work directory ...
const PROFILES_DIR: &str = "profiles";
/// ... the service's Python, which every jail runs read-only ...
pub(super) const HARNESS_DIR: &str = "harness";
/// ... and in it what covers the host-wide `/proc` counters (`masks.rs`), so a warm child and
/// a cold jail see the same directory.
pub(super) const MASKS_DIR: &str = "harness/proc-masks";

/// The last canary's result.
#[derive(Debug, Clone)]
pub(super) struct Health {
    pub status: Result<(), String>,
    pub checked: Instant,
}

/// What start-up (or a later re-check) chose, and why not better.
#[derive(Debug, Clone, Default)]
pub(super) struct Choice {
    /// Stronger profiles than the active one that were tried and failed, strongest first;
    /// when nothing works, every candidate.
    pub failed: Vec<ProfileFailure>,
    /// Why executions run cold, when the warm path is configured and did not start.
    pub cold_reason: Option<String>,
}

/// A profile that did not work on this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFailure {
    pub profile: Profile,
    pub reason: String,
}

/// The service must not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot take a block of uids for this instance: {0}")]
    NoBlock(String),
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

/// How the warm path stands, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmState {
    /// Executions are forked from the zygote now.
    pub on: bool,
    /// Why not, when they are not.
    pub reason: Option<String>,
}

impl Sandbox {
    /// Finds what this host allows (cgroups, then the profile) and checks the sandbox works.
    /// A sandbox that does not work at all still starts, unhealthy, so `/health` can say why;
    /// one that only works below `sandbox.require` does not start.
    pub async fn start(config: SandboxConfig, limits: Limits) -> Result<Self, StartError> {
        let mut sandbox = Self::new(config, limits);
        let (uid_base, work_root) = (sandbox.config.uid_base, sandbox.config.work_root.clone());
        let memory_bytes = sandbox.limits.memory_bytes;
        let (block, quarantined, masks) = blocking(move || {
            let block = Block::claim(uid_base, &work_root)?;
            let quarantined = block.sweep_leftovers();
            let harness = block.work_dir().join(HARNESS_DIR);
            harness::install(&harness)
                .map_err(|error| format!("cannot write {}: {error}", harness.display()))?;
            let dir = block.work_dir().join(MASKS_DIR);
            let masks = masks::install(&dir, memory_bytes)
                .map_err(|error| format!("cannot write {}: {error}", dir.display()))?;
            Ok::<_, String>((block, quarantined, masks))
        })
        .await
        .map_err(|error| StartError::NoBlock(error.to_string()))?
        .map_err(StartError::NoBlock)?;
        sandbox.masks = masks;
        // Without a user namespace the jail starts unprivileged and reads its profile itself:
        // the instance's copy (`choose` makes it, each time) is readable by every slot,
        // wherever the configured files are.
        sandbox.config.profile_dir = block.work_dir().join(PROFILES_DIR);
        sandbox.slots = Self::slots(&sandbox.config, block.uids().start, sandbox.cancel.clone());
        sandbox.slots.quarantine(quarantined);
        let subtree = block.name();
        sandbox.block = Some(block);
        if sandbox.config.cgroups {
            let (limits, python) = (sandbox.limits.clone(), sandbox.config.python.clone());
            sandbox.cgroups = blocking(move || Cgroups::detect(&limits, &subtree, &python))
                .await
                .unwrap_or_else(|error| Err(error.to_string()))
                .inspect_err(|reason| {
                    tracing::warn!(
                        reason,
                        "no cgroups that hold their limits: memory and processes are bounded by \
                         rlimits and the watchdog"
                    );
                })
                .ok();
        }
        if let Some(refusal) = sandbox.choose().await {
            return Err(refusal);
        }
        sandbox.finish_start().await;
        Ok(sandbox)
    }

    /// The profiles to try, strongest first.
    fn candidates(&self) -> &'static [Profile] {
        match self.config.profile {
            ProfileChoice::Auto => &[Profile::Strict, Profile::CloudRun],
            ProfileChoice::Strict => &[Profile::Strict],
            ProfileChoice::CloudRun => &[Profile::CloudRun],
        }
    }

    /// Runs the canary in each candidate until one works and makes it the active profile;
    /// when none does, the strongest stays active, unhealthy, with every reason. `Some` when
    /// the only one that works is weaker than `sandbox.require`.
    async fn choose(&self) -> Option<StartError> {
        let (from, to) = (self.profiles_from.clone(), self.config.profile_dir.clone());
        let installed = blocking(move || install_profiles(&from, &to))
            .await
            .unwrap_or_else(|error| Err(error.to_string()));
        if let Err(reason) = installed {
            self.record(Err(reason));
            return None;
        }
        let mut failed = Vec::new();
        for &profile in self.candidates() {
            self.profile.set(profile);
            match self.check().await {
                Ok(()) if profile < self.config.require => {
                    return Some(StartError::ProfileTooWeak {
                        required: self.config.require,
                        available: profile,
                        reason: describe(&failed),
                    });
                }
                Ok(()) => {
                    if !failed.is_empty() {
                        tracing::warn!(
                            reason = describe(&failed),
                            "THE STRICT PROFILE DOES NOT WORK ON THIS HOST: running the weaker \
                             `cloudrun` profile (no mount, pid or network namespace; see \
                             SECURITY.md). Set sandbox.require = \"strict\" to refuse to start \
                             instead."
                        );
                    }
                    self.choice().failed = failed;
                    return None;
                }
                Err(reason) => failed.push(ProfileFailure { profile, reason }),
            }
        }
        let strongest = self.candidates()[0];
        self.profile.set(strongest);
        self.record(Err(describe(&failed)));
        self.choice().failed = failed;
        None
    }

    /// Starts the warm path where it is on and the sandbox works, reads the installed
    /// packages, and logs how it came up.
    async fn finish_start(&self) {
        let health = self.last_health().status;
        if let Err(reason) = health {
            tracing::error!(
                reason,
                "sandbox unavailable: /health answers 503 until it works"
            );
            return;
        }
        if self.config.warm {
            let started = self.start_warm().await;
            if let Err(reason) = &started {
                tracing::warn!(
                    reason,
                    "the warm path did not start: every script runs cold"
                );
            }
            self.choice().cold_reason = started.err();
        }
        let installed = packages::read(self).await;
        let count = installed.packages.len();
        *self
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(installed);
        tracing::info!(
            profile = self.profile().name(),
            limits = ?self.limits_backend(),
            warm = self.is_warm(),
            packages = count,
            uids = ?self.slot_uids(),
            cgroups = ?self.cgroup_parents(),
            "sandbox ready"
        );
    }

    /// Runs the canary script and records the result for [`Sandbox::health`].
    pub async fn check(&self) -> Result<(), String> {
        self.canary(None).await
    }

    /// The canary, which must also have run on `path` when one is given (the warm path's own
    /// canary: an execution that fell back to cold would hide a broken warm path).
    pub(super) async fn canary(&self, path: Option<RunPath>) -> Result<(), String> {
        let status = match self.run_own(CANARY).await {
            Ok(Execution {
                path: ran,
                cold_because: Some(reason),
                ..
            }) if path.is_some_and(|path| path != ran) => {
                Err(format!("it ran {} instead: {reason}", ran.as_str()))
            }
            Ok(Execution {
                outcome: Outcome::Returned(returned),
                ..
            }) if returned.result.get() == "\"ok\"" => Ok(()),
            Ok(execution) => Err(format!(
                "the canary script did not return \"ok\": {execution:?}"
            )),
            Err(SandboxError::Unavailable(reason)) => Err(reason),
            Err(error) => Err(error.to_string()),
        };
        self.record(status.clone());
        status
    }

    pub(super) fn record(&self, status: Result<(), String>) {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = Health {
            status,
            checked: Instant::now(),
        };
    }

    fn last_health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn choice(&self) -> std::sync::MutexGuard<'_, Choice> {
        self.choice.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether scripts can run: the last canary's result, plus a cheap check that nsjail, the
    /// interpreter and the profile are still there. A failure is re-checked at most every
    /// 10 s, by one caller at a time (the others wait for its answer); for `auto`, every
    /// profile is tried again.
    pub async fn health(&self) -> Result<(), String> {
        let last = self.last_health();
        if last.status.is_ok() {
            return self.files_present();
        }
        if last.checked.elapsed() < HEALTH_RETRY {
            return last.status;
        }
        let _rechecking = self.rechecking.lock().await;
        let last = self.last_health();
        if last.checked.elapsed() < HEALTH_RETRY {
            return last.status;
        }
        if self.choose().await.is_some() {
            // Only a profile weaker than required works: stay unhealthy, and say so.
            self.profile.set(self.candidates()[0]);
            self.record(Err(format!(
                "only a profile weaker than sandbox.require (`{}`) works on this host",
                self.config.require.name()
            )));
        } else if self.last_health().status.is_ok() {
            tracing::info!(profile = self.profile().name(), "the sandbox works again");
            self.finish_start().await;
        }
        self.last_health().status
    }

    /// Profiles stronger than the active one that failed here, with why.
    pub fn failed_profiles(&self) -> Vec<ProfileFailure> {
        self.choice().failed.clone()
    }

    /// Whether executions are forked from the zygote now, and why not when they are not.
    pub fn warm_state(&self) -> WarmState {
        let on = self.is_warm();
        let reason = if on {
            None
        } else if !self.config.warm {
            Some("the warm path is off (sandbox.warm = false)".to_owned())
        } else {
            Some(
                self.choice()
                    .cold_reason
                    .clone()
                    .unwrap_or_else(|| "the zygote is restarting".to_owned()),
            )
        };
        WarmState { on, reason }
    }

    fn files_present(&self) -> Result<(), String> {
        let profile = self.config.profile_dir.join(self.profile().config_file());
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
}

/// Every failure, as one line: `strict: why; cloudrun: why`.
fn describe(failed: &[ProfileFailure]) -> String {
    failed
        .iter()
        .map(|failure| format!("{}: {}", failure.profile.name(), failure.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Copies the profiles in `from` into `to` (root's, readable by all), replacing what an
/// earlier copy left. A missing one stays missing: its canary then fails saying so.
fn install_profiles(from: &Path, to: &Path) -> Result<(), String> {
    let failed = |error: std::io::Error| {
        format!("cannot copy the jail profiles to {}: {error}", to.display())
    };
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(to)
        .map_err(failed)?;
    for profile in [Profile::Strict, Profile::CloudRun] {
        let (source, target) = (
            from.join(profile.config_file()),
            to.join(profile.config_file()),
        );
        if let Err(error) = std::fs::remove_file(&target)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(failed(error));
        }
        if source.is_file() {
            std::fs::copy(&source, &target).map_err(failed)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))
                .map_err(failed)?;
        }
    }
    Ok(())
}
