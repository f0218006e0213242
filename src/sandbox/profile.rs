//! What each jail profile is, as data: its nsjail config file, how it runs (supervised with
//! namespaces, or exec'd in place without), and what it guarantees. The static nsjail policy
//! is in `nsjail/<name>.cfg`; this is what the service must know about it to build a command,
//! read an exit status and tell callers how strongly their scripts are isolated.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Profile;
use crate::protocol::{Isolation, LimitsBackend};

/// The profile executions start in now: chosen at start-up, and again by a health check
/// while nothing works. An execution reads it once and keeps it to its end.
#[derive(Debug)]
pub struct ActiveProfile(AtomicBool);

impl ActiveProfile {
    pub fn new(profile: Profile) -> Self {
        Self(AtomicBool::new(profile == Profile::Strict))
    }

    pub fn get(&self) -> Profile {
        if self.0.load(Ordering::SeqCst) {
            Profile::Strict
        } else {
            Profile::CloudRun
        }
    }

    pub fn set(&self, profile: Profile) {
        self.0.store(profile == Profile::Strict, Ordering::SeqCst);
    }
}

impl Profile {
    /// The nsjail config file, in the profile directory.
    pub fn config_file(self) -> &'static str {
        match self {
            Self::Strict => "strict.cfg",
            Self::CloudRun => "cloudrun.cfg",
        }
    }

    /// Whether the jail has its own user, mount and pid namespaces. If so nsjail supervises
    /// the script (`-Mo`) and reports its exit in its log; if not nsjail execs into the
    /// script (`-Me`) and the exit status the service sees is the script's own.
    pub fn namespaced(self) -> bool {
        match self {
            Self::Strict => true,
            Self::CloudRun => false,
        }
    }

    pub fn isolation(self, limits: LimitsBackend) -> Isolation {
        let memory = match limits {
            LimitsBackend::CgroupV1 | LimitsBackend::CgroupV2 => {
                "memory and process limits per execution (cgroup), CPU time, file size and open files (rlimits)"
            }
            LimitsBackend::Rlimits => {
                "memory (address space), processes, CPU time, file size and open files limited by rlimits"
            }
        };
        let common = [
            "runs as an unprivileged uid of its own, never root, no capabilities, no_new_privs",
            "seccomp: no mount, unshare, setns, ptrace, bpf, keyctl, kexec, module loading, io_uring, System V IPC",
            "no network: no sockets at all (socketpair only)",
            "nothing outlives the execution",
            "wall-time limit, output and result caps",
            memory,
        ];
        let (specific, not_isolated): (&[&'static str], &[&'static str]) = match self {
            Self::Strict => (
                &[
                    "private read-only root: host files, /proc, /dev and /sys invisible",
                    "private /tmp per execution (tmpfs with a size limit)",
                    "own network namespace: only a loopback interface, no routes",
                    "own pid namespace: host processes invisible",
                ],
                &[],
            ),
            Self::CloudRun => (
                &[
                    "private TMPDIR per execution; files left in shared temp directories are deleted",
                    "processes of the execution's uid are killed when it ends",
                ],
                &[
                    "host filesystem: readable where world-readable (no mount namespace)",
                    "host processes, network interfaces and routes: visible (no pid or network namespace)",
                ],
            ),
        };
        Isolation {
            profile: self.name(),
            limits,
            guarantees: common.iter().chain(specific).copied().collect(),
            not_isolated: not_isolated.to_vec(),
        }
    }
}
