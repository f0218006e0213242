//! Every document the service sends into Python, and every reply it reads back from the
//! zygote, as Rust types: the harness's settings, the zygote's init, a fork request, a warm
//! child's jail settings, and the zygote's replies. The frames the harness reports are typed in
//! `harness/mod.rs`. Each document has a golden copy in `src/harness/golden/documents/`: the
//! tests here check that these types write (or read) exactly it, and `test_harness.py` that
//! the Python side reads (or writes) exactly it, so neither side can change one alone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Limits;

/// Descriptors an execution's process has: the result channel and (both paths) the job.
pub const RESULT_FD: i32 = 3;
pub const JOB_FD: i32 = 5;

/// What the harness is told (`harness.py`'s `read_settings`): where to report and read the job,
/// the rlimits to lower before user code, the limits failures report, and (cold: the warm
/// path's zygote holds them) the seccomp filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HarnessSettings<'a> {
    pub result_fd: i32,
    pub job_fd: i32,
    pub rlimits: Rlimits,
    pub limits: HarnessLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<&'a [String]>,
}

/// The rlimits the harness sets on itself, soft and hard (`CPU`: soft, then hard, one second
/// apart so SIGXCPU comes first). Memory is an address-space limit only where no cgroup bounds
/// it: address space overcounts (numpy maps far more than it touches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct Rlimits {
    pub nproc: u64,
    pub cpu: (u64, u64),
    pub fsize: u64,
    pub nofile: u64,
    pub core: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#as: Option<u64>,
}

/// The limits the harness reports in failures and applies to returned files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HarnessLimits {
    pub result_bytes: usize,
    pub memory_bytes: u64,
    pub cpu_secs: u64,
    pub processes: u64,
    pub file_bytes: u64,
    pub tmp_bytes: u64,
    pub open_files: u64,
    pub output_files: usize,
    pub output_files_bytes: u64,
}

impl<'a> HarnessSettings<'a> {
    /// The settings for an execution under `limits`, memory bounded by a cgroup or not.
    pub fn new(limits: &Limits, cgroup: bool, seccomp: Option<&'a [String]>) -> Self {
        Self {
            result_fd: RESULT_FD,
            job_fd: JOB_FD,
            rlimits: Rlimits {
                nproc: limits.processes,
                cpu: (limits.cpu_secs, limits.cpu_secs + 1),
                fsize: limits.file_bytes,
                nofile: limits.open_files,
                core: 0,
                r#as: (!cgroup).then_some(limits.memory_bytes),
            },
            limits: HarnessLimits {
                result_bytes: limits.result_bytes,
                memory_bytes: limits.memory_bytes,
                cpu_secs: limits.cpu_secs,
                processes: limits.processes,
                file_bytes: limits.file_bytes,
                tmp_bytes: limits.tmp_bytes,
                open_files: limits.open_files,
                output_files: limits.output_files,
                output_files_bytes: limits.output_files_bytes,
            },
            seccomp,
        }
    }
}

/// What a zygote is told when it starts (`zygote.py`'s `read_init`).
#[derive(Debug, Serialize)]
pub struct ZygoteInit<'a> {
    /// Whether its children make namespaces (`strict`).
    pub namespaces: bool,
    pub preload: &'a [String],
    pub seccomp: ZygoteFilters<'a>,
    /// `[cover, /proc entry]` pairs, as the zygote sees them (`masks.rs`).
    pub masks: Vec<(PathBuf, PathBuf)>,
}

/// The zygote's own seccomp filters, and every script's.
#[derive(Debug, Serialize)]
pub struct ZygoteFilters<'a> {
    pub zygote: Vec<String>,
    pub script: &'a [String],
}

/// A request for one child; its descriptors (`zygote.rs`) say the rest.
#[derive(Debug, Serialize)]
pub struct ForkRequest {
    pub fork: Empty,
}

/// `{}`.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// What a warm child reads from its first memfd, before anything else: how to make itself the
/// execution's jail (`zygote.py`'s `read_jail`). The job comes in the second, read only once
/// the harness has said `started`.
#[derive(Debug, Serialize)]
pub struct WarmJail<'a> {
    pub uid: u32,
    pub cwd: &'a Path,
    pub tmp_bytes: u64,
    pub env: std::collections::BTreeMap<&'static str, String>,
    pub settings: HarnessSettings<'a>,
}

/// The zygote's first message, once it has imported what it preloads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub ready: i64,
}

/// What the zygote says on a child's status socket.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Status {
    /// The child's pid, as the zygote sees it.
    Spawned(i64),
    /// It could not fork.
    Error(String),
    /// The child's wait status.
    Exit(i32),
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn golden(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/harness/golden/documents")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            memory_bytes: 256 << 20,
            ..Limits::default()
        }
    }

    #[test]
    fn the_harness_settings_are_the_golden_ones() {
        let seccomp = ["00112233".to_owned()];
        let cold = HarnessSettings::new(&limits(), false, Some(&seccomp));
        assert_eq!(
            serde_json::to_value(&cold).unwrap(),
            golden("harness_settings.json")
        );
        let warm = HarnessSettings::new(&limits(), true, None);
        let mut expected = golden("harness_settings.json");
        expected.as_object_mut().unwrap().remove("seccomp");
        expected["rlimits"].as_object_mut().unwrap().remove("AS");
        assert_eq!(serde_json::to_value(&warm).unwrap(), expected);
    }

    #[test]
    fn the_zygote_s_init_and_fork_request_are_the_golden_ones() {
        let (preload, script) = (["numpy".to_owned()], ["aabb".to_owned()]);
        let init = ZygoteInit {
            namespaces: true,
            preload: &preload,
            seccomp: ZygoteFilters {
                zygote: vec!["ccdd".to_owned()],
                script: &script,
            },
            masks: vec![("/masks/stat".into(), "/proc/stat".into())],
        };
        assert_eq!(
            serde_json::to_value(&init).unwrap(),
            golden("zygote_init.json")
        );
        let request = ForkRequest { fork: Empty {} };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            golden("fork_request.json")
        );
    }

    #[test]
    fn the_warm_jail_is_the_golden_one() {
        let jail = WarmJail {
            uid: 1,
            cwd: Path::new("/tmp"),
            tmp_bytes: 1 << 20,
            env: [
                ("PATH", "/usr/bin:/bin".to_owned()),
                ("TMPDIR", "/tmp".to_owned()),
            ]
            .into(),
            settings: HarnessSettings::new(&limits(), true, None),
        };
        assert_eq!(
            serde_json::to_value(&jail).unwrap(),
            golden("warm_jail.json")
        );
    }

    #[test]
    fn the_zygote_s_replies_read_as_the_golden_ones_say() {
        let replies = golden("replies.json");
        let ready: Ready = serde_json::from_value(replies["ready"].clone()).unwrap();
        assert_eq!(ready.ready, 42);
        let read = |name: &str| serde_json::from_value::<Status>(replies[name].clone()).unwrap();
        assert_eq!(read("spawned"), Status::Spawned(43));
        assert_eq!(read("error"), Status::Error("fork: no memory".to_owned()));
        assert_eq!(read("exit"), Status::Exit(256));
        assert!(
            serde_json::from_value::<Status>(serde_json::json!({"spawned": 1, "x": 2})).is_err()
        );
    }
}
