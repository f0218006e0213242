//! What an execution gets on the host before its jail starts: without a mount namespace
//! (`cloudrun`) a private directory with a `tmp/` only its uid can use (its `TMPDIR`, `HOME`
//! and working directory); where cgroups hold their limits, a cgroup of its own. A namespaced
//! jail needs no directory on the host at all: its `/tmp` is a tmpfs of its own. Both are made
//! on the blocking pool, and from then on belong to the slot, whose sweep removes them.

use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Sandbox, SandboxError, blocking, cgroup, cleanup, command};
use crate::config::{Limits, Profile};

/// An execution's directory and cgroup, and how long each took to make.
#[derive(Debug)]
pub struct Prepared {
    pub workdir: Option<PathBuf>,
    pub cgroup: Option<cgroup::Cgroup>,
    pub workdir_took: Duration,
    pub cgroup_took: Duration,
}

impl Sandbox {
    /// The execution's directory (in `parent`, without a mount namespace) and, where cgroups
    /// hold their limits, its cgroup with `limits`.
    pub(super) async fn prepare(
        &self,
        parent: &Path,
        profile: Profile,
        uid: u32,
        limits: &Limits,
    ) -> Result<Prepared, SandboxError> {
        let number = self.executions.fetch_add(1, Ordering::Relaxed);
        let dir = (!profile.namespaced()).then(|| parent.join(format!("run-{uid}-{number}")));
        let cgroups = self.cgroups.clone();
        let limits = limits.clone();
        blocking(move || {
            let started = Instant::now();
            if let Some(dir) = &dir
                && let Err(error) = make(dir, uid)
            {
                cleanup::remove_or_quarantine(dir);
                return Err(error);
            }
            let workdir_took = started.elapsed();
            let cgroup = cgroups
                .map(|cgroups| cgroups.create(&format!("run-{uid}"), &limits))
                .transpose()
                .map_err(|source| {
                    if let Some(dir) = &dir {
                        cleanup::remove_or_quarantine(dir);
                    }
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

/// Makes `dir` root's with the slot's gid (mode 0750: the script may enter, not write), and
/// in it a `tmp/` only the slot's uid can use.
fn make(dir: &Path, uid: u32) -> Result<(), SandboxError> {
    let internal = |context| move |source| io_error(dir, context, source);
    std::fs::create_dir(dir).map_err(internal("creating the execution directory failed"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(internal("setting the execution directory's mode failed"))?;
    let tmp = dir.join(command::TMP_DIR);
    std::fs::create_dir(&tmp).map_err(internal("creating the execution's tmp failed"))?;
    chown(&tmp, Some(uid), Some(uid)).map_err(internal(
        "handing the execution's tmp to the slot's uid failed",
    ))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
        .map_err(internal("setting the execution's tmp mode failed"))?;
    chown(dir, None, Some(uid))
        .map_err(internal("handing the directory to the slot's gid failed"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .map_err(internal("setting the execution directory's mode failed"))?;
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
