//! One cgroup per execution, where this host lets the service write cgroups: it bounds the
//! jail's memory and process count, tells afterwards whether the kernel's OOM killer struck
//! (so a memory kill is reported as such, not as a bare SIGKILL), and is removed with
//! everything in it when the execution ends.
//!
//! The service creates the group and the jail joins it before nsjail starts (see
//! `command::JOIN_CGROUPS`), so nsjail needs no cgroup support of its own and the same code
//! serves both profiles. Detection is by doing, not by guessing: [`Cgroups::detect`] creates
//! and removes a real group with the limits set.

use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::config::Limits;
use crate::protocol::LimitsBackend;

const ROOT: &str = "/sys/fs/cgroup";
/// The name of the group all instances' subtrees live in.
const PARENT: &str = "pyexec";
/// The memory proof's group holds at most this much ...
const PROOF_MEMORY_BYTES: u64 = 32 << 20;
/// ... and its process writes this much.
const PROOF_WRITES_BYTES: u64 = 128 << 20;
/// Joins the groups named before `--`, then runs the check after it: in a group limited to
/// one process, a second must not start (the shell exits 2 when it cannot fork, 3 when it
/// could); in a group limited in memory, the command writing more than that must be killed.
const PROOF: &str = r#"while [ "$1" != "--" ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; shift; if [ "$1" = fork ]; then ( : ) 2>/dev/null; exit 3; fi; exec "$@""#;

/// Where per-execution groups are made.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// cgroup v1: separate `memory` and `pids` hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
    /// cgroup v2: one unified hierarchy.
    V2 { parent: PathBuf },
}

/// What an execution's group measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct CgroupUsage {
    /// The kernel's OOM killer killed a process of the group.
    pub oom_killed: bool,
    /// The most memory the group held, in bytes.
    pub memory_peak_bytes: Option<u64>,
}

/// One execution's group (one directory per hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroups {
    /// Finds writable cgroups, creates the instance's subtree (`pyexec/<subtree>`, named after
    /// its uid block, so it is this instance's alone), removes the groups an earlier holder
    /// left in it, and proves a child group with limits can be made. The error says why not,
    /// for the start-up log.
    pub fn detect(limits: &Limits, subtree: &str, python: &Path) -> Result<Self, String> {
        let found = if Path::new(ROOT).join("cgroup.controllers").exists() {
            detect_v2(subtree)?
        } else {
            detect_v1(subtree)?
        };
        let v2 = matches!(found, Self::V2 { .. });
        for parent in found.parents() {
            let Ok(children) = std::fs::read_dir(&parent) else {
                continue;
            };
            for child in children.flatten().filter(|child| child.path().is_dir()) {
                drop(Cgroup {
                    dirs: vec![child.path()],
                    v2,
                });
            }
        }
        found
            .create("probe", limits)
            .map_err(|error| format!("cannot create a cgroup with limits: {error}"))?;
        found.prove_enforced(python)?;
        Ok(found)
    }

    /// Proves that a group's limits hold, by breaking them: a cgroup file system can accept
    /// limits it does not enforce (gVisor's memory controller takes `memory.limit_in_bytes`
    /// and lets a process use far more), and trusting one would leave memory unbounded, the
    /// address-space rlimit and the watchdog both being off where a cgroup bounds memory.
    fn prove_enforced(&self, python: &Path) -> Result<(), String> {
        let memory = Limits {
            memory_bytes: PROOF_MEMORY_BYTES,
            ..Limits::default()
        };
        let write = format!("b'x' * {PROOF_WRITES_BYTES}");
        let python = python.as_os_str();
        let status = self.try_in(
            "proof-memory",
            &memory,
            &[
                python,
                "-I".as_ref(),
                "-S".as_ref(),
                "-c".as_ref(),
                write.as_ref(),
            ],
        )?;
        if status.signal() != Some(Signal::KILL.as_raw()) {
            return Err(format!(
                "the cgroup memory limit is not enforced: a process wrote {} MiB in a group \
                 limited to {} MiB ({status})",
                PROOF_WRITES_BYTES >> 20,
                PROOF_MEMORY_BYTES >> 20
            ));
        }
        let processes = Limits {
            processes: 1,
            ..Limits::default()
        };
        // The shell exits 2 when it cannot fork, 3 when it could.
        let status = self.try_in("proof-processes", &processes, &["fork".as_ref()])?;
        if status.code() != Some(2) {
            return Err(format!(
                "the cgroup process limit is not enforced: a group limited to one process \
                 started a second ({status})"
            ));
        }
        Ok(())
    }

    /// Runs `PROOF` with `check` in a fresh group `name` with `limits`; how it ended.
    fn try_in(
        &self,
        name: &str,
        limits: &Limits,
        check: &[&std::ffi::OsStr],
    ) -> Result<std::process::ExitStatus, String> {
        let group = self
            .create(name, limits)
            .map_err(|error| format!("cannot create a cgroup with limits: {error}"))?;
        std::process::Command::new("/bin/sh")
            .args(["-c", PROOF, "pyexec-cgroup-proof"])
            .args(group.dirs())
            .arg("--")
            .args(check)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|error| format!("cannot run the cgroup proof: {error}"))
    }

    /// The directories the per-execution groups are made in, one per hierarchy.
    pub fn parents(&self) -> Vec<PathBuf> {
        match self {
            Self::V1 { memory, pids } => vec![memory.clone(), pids.clone()],
            Self::V2 { parent } => vec![parent.clone()],
        }
    }

    pub fn backend(&self) -> LimitsBackend {
        match self {
            Self::V1 { .. } => LimitsBackend::CgroupV1,
            Self::V2 { .. } => LimitsBackend::CgroupV2,
        }
    }

    /// Creates the group `name` with the memory and process limits.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<Cgroup> {
        let memory = limits.memory_bytes.to_string();
        let pids = limits.processes.to_string();
        let cgroup = match self {
            Self::V1 {
                memory: memory_root,
                pids: pids_root,
            } => Cgroup {
                dirs: vec![memory_root.join(name), pids_root.join(name)],
                v2: false,
            },
            Self::V2 { parent } => Cgroup {
                dirs: vec![parent.join(name)],
                v2: true,
            },
        };
        for dir in &cgroup.dirs {
            create_fresh(dir)?;
        }
        let first = &cgroup.dirs[0];
        if cgroup.v2 {
            std::fs::write(first.join("memory.max"), &memory)?;
            // Best effort: swap may be off, and then the file is absent.
            let _ = std::fs::write(first.join("memory.swap.max"), "0");
            std::fs::write(first.join("pids.max"), &pids)?;
        } else {
            std::fs::write(first.join("memory.limit_in_bytes"), &memory)?;
            let _ = std::fs::write(first.join("memory.memsw.limit_in_bytes"), &memory);
            std::fs::write(cgroup.dirs[1].join("pids.max"), &pids)?;
        }
        Ok(cgroup)
    }
}

impl Cgroup {
    /// The directories a process must join (write its pid to `cgroup.procs`).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves the process `pid` (and its threads) into the group. A write to the kernel's
    /// in-memory cgroup files: quick, so done in place.
    pub fn join(&self, pid: i32) -> io::Result<()> {
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// What the group measured, read before it is removed.
    pub fn usage(&self) -> CgroupUsage {
        CgroupUsage {
            oom_killed: self.oom_killed(),
            memory_peak_bytes: self.memory_peak(),
        }
    }

    /// Whether the kernel's OOM killer killed a process of this group.
    fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(self.dirs[0].join(file)).is_ok_and(|text| {
            text.lines()
                .filter_map(|line| line.split_once(' '))
                .any(|(name, count)| name == key && count.trim() != "0")
        })
    }

    /// The most memory the group has held, in bytes.
    fn memory_peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs every process in the group.
    fn kill_all(&self) {
        if self.v2 && std::fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for dir in &self.dirs {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in procs
                .lines()
                .filter_map(|line| line.trim().parse::<i32>().ok())
            {
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
    }

    /// Kills what is left and removes the group, waiting up to a second for the dying.
    /// Whether it is gone: then no process that was ever in it lives (a directory with a live
    /// member cannot be removed, and a member cannot leave: the cgroup files are root's).
    fn remove(&self) -> bool {
        for _ in 0..100 {
            self.kill_all();
            if self.dirs.iter().all(|dir| remove_dir(dir).is_ok()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(dirs = ?self.dirs, "could not remove an execution's cgroup");
        false
    }

    /// Removes the group now (see [`Cgroup::remove`]), saying whether it is gone.
    pub fn close(mut self) -> bool {
        let gone = self.remove();
        // Nothing left for the drop to remove.
        self.dirs.clear();
        gone
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.dirs.is_empty() {
            self.remove();
        }
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates `dir`, first removing a stale one a crashed earlier run may have left.
fn create_fresh(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            drop(Cgroup {
                dirs: vec![dir.to_owned()],
                v2: false,
            });
            std::fs::create_dir(dir)
        }
        other => other,
    }
}

fn detect_v1(subtree: &str) -> Result<Cgroups, String> {
    let memory = Path::new(ROOT).join("memory");
    let pids = Path::new(ROOT).join("pids");
    for (controller, dir) in [("memory", &memory), ("pids", &pids)] {
        if !dir.join("cgroup.procs").exists() {
            return Err(format!(
                "no cgroup v1 {controller} hierarchy at {}",
                dir.display()
            ));
        }
    }
    let (memory, pids) = (
        memory.join(PARENT).join(subtree),
        pids.join(PARENT).join(subtree),
    );
    for dir in [&memory, &pids] {
        std::fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    }
    Ok(Cgroups::V1 { memory, pids })
}

/// cgroup v2 allows controllers only in groups without processes of their own, so where the
/// service's own group must delegate (a container's root), the service first moves its
/// processes into a leaf group, as container init systems do.
fn detect_v2(subtree: &str) -> Result<Cgroups, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|error| format!("/proc/self/cgroup: {error}"))?;
    let own = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/");
    let base = Path::new(ROOT).join(own.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    if !(controllers.split_whitespace().any(|c| c == "memory")
        && controllers.split_whitespace().any(|c| c == "pids"))
    {
        return Err(format!(
            "cgroup v2 at {} does not offer memory and pids",
            base.display()
        ));
    }
    let enable = |dir: &Path| std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
    if enable(&base).is_err() {
        let leaf = base.join("pyexec-service");
        std::fs::create_dir_all(&leaf)
            .map_err(|error| format!("cannot create {}: {error}", leaf.display()))?;
        let procs = std::fs::read_to_string(base.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
        }
        enable(&base).map_err(|error| {
            format!(
                "cannot delegate memory and pids in {}: {error}",
                base.display()
            )
        })?;
    }
    let mut parent = base.join(PARENT);
    for level in [None, Some(subtree)] {
        if let Some(name) = level {
            parent = parent.join(name);
        }
        std::fs::create_dir_all(&parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        enable(&parent).map_err(|error| {
            format!(
                "cannot delegate memory and pids in {}: {error}",
                parent.display()
            )
        })?;
    }
    Ok(Cgroups::V2 { parent })
}
