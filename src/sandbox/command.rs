//! Builds the command lines: one execution's cold jail and the warm path's zygote. Pure: it
//! spawns nothing, so the argv is unit-tested. The static policy lives in the profile file
//! (`nsjail/<profile>.cfg`); only per-run values are flags here, so a profile is a file plus a
//! few facts in `profile.rs`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::documents::{JOB_FD, RESULT_FD};
use super::masks::Mask;
use super::process::ExtraFds;
use crate::config::{Limits, Profile, SandboxConfig};
use crate::harness::{HARNESS_FILE, ZYGOTE_FILE};

/// The descriptors every cold execution uses: 3 is passed into the jail for the result
/// frames, 4 carries nsjail's own log and is closed before the script starts; the job is 5
/// (`documents::JOB_FD`).
pub const FDS: ExtraFds = ExtraFds {
    result: RESULT_FD,
    log: 4,
};

/// The private temp directory inside an execution's directory (profiles without a mount
/// namespace), exported as TMPDIR and HOME.
pub const TMP_DIR: &str = "tmp";

/// Where a namespaced jail sees the service's Python (installed read-only by the instance).
const JAIL_HARNESS: &str = "/harness";
/// ... and in it the covers of `/proc` entries (`startup::MASKS_DIR`).
pub const JAIL_MASKS: &str = "/harness/proc-masks";

/// Isolated mode (no env, no user site, no script dir on sys.path), unbuffered so output
/// written before a kill is not lost, UTF-8 whatever the locale, no bytecode writes.
const PYTHON_FLAGS: [&str; 5] = ["-I", "-u", "-X", "utf8", "-B"];

/// Joins the cgroups named before `--`, then becomes the command after it: the jail is in its
/// groups from its first instruction, with no race and no code of ours between fork and exec.
const JOIN_CGROUPS: &str = r#"while [ "$1" != "--" ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; shift; exec "$@""#;

/// BLAS and OpenMP pools, sized to one thread.
const THREAD_ENV: [&str; 4] = [
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

/// Starts its command in a new session (util-linux, in every Debian image).
pub const SETSID: &str = "/usr/bin/setsid";

/// Changes uid, gid and capability sets, then execs its command (util-linux, as `setsid`).
const SETPRIV: &str = "/usr/bin/setpriv";

/// Everything that varies between cold executions.
#[derive(Debug)]
pub struct Run<'a> {
    pub config: &'a SandboxConfig,
    pub limits: &'a Limits,
    pub profile: Profile,
    /// The execution's directory on the host (no mount namespace): its cwd and `tmp/`.
    pub workdir: Option<&'a Path>,
    /// Where the instance installed the service's Python on the host.
    pub harness_dir: &'a Path,
    /// The host uid and gid of the execution's slot, and (namespaced) what it is inside.
    pub uid: u32,
    pub inner_uid: u32,
    /// The cgroup directories to join, if memory and processes are bounded by a cgroup.
    pub cgroup_dirs: &'a [PathBuf],
    /// What the interpreter runs: the harness with these settings (JSON), or (the benchmark's
    /// baseline) these arguments.
    pub python: Python<'a>,
    /// What covers the host-wide `/proc` counters, bound over them in a namespaced jail.
    pub masks: &'a [Mask],
}

/// What the jail's interpreter runs.
#[derive(Debug)]
pub enum Python<'a> {
    /// The harness, given its settings (`documents::HarnessSettings`, as JSON).
    Harness(&'a str),
    /// Anything else (the benchmark's baseline).
    Args(&'a [&'a str]),
}

/// nsjail nowhere else than here: nsjail itself gets an empty environment. The whole chain
/// starts in a session of its own (`setsid`, which then execs): the kernel's scheduler shares
/// the CPU between sessions before processes, so one execution's hundred busy processes cannot
/// starve another's one; and the session's process group is what the service kills at the end.
///
/// Without a user namespace nsjail is started as the slot's uid and never changes it itself:
/// nsjail running as root sets `SECBIT_NO_SETUID_FIXUP` before it changes uid, which gVisor
/// (Cloud Run's first generation) refuses, so every execution would fail there. `setpriv`
/// drops root the plain way (setresgid, no supplementary groups, setresuid), after root has
/// emptied the bounding and inheritable sets, which an unprivileged nsjail could not.
pub fn build(run: &Run<'_>) -> Command {
    let mut cmd = Command::new(SETSID);
    if !run.cgroup_dirs.is_empty() {
        cmd.args(["/bin/sh", "-c", JOIN_CGROUPS, "pyexec-join-cgroups"])
            .args(run.cgroup_dirs)
            .arg("--");
    }
    if !run.profile.namespaced() {
        let id = run.uid.to_string();
        cmd.args([
            SETPRIV,
            "--reuid",
            &id,
            "--regid",
            &id,
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]);
    }
    cmd.arg(&run.config.nsjail);
    let dir = &run.config.profile_dir;
    cmd.arg("--config")
        .arg(dir.join(run.profile.config_file()))
        .args([
            "--log_fd",
            &FDS.log.to_string(),
            "--pass_fd",
            &FDS.result.to_string(),
            "--pass_fd",
            &JOB_FD.to_string(),
        ])
        .args(["--time_limit", &backstop_secs(run.limits).to_string()]);
    let harness = if run.profile.namespaced() {
        let ids = format!("{}:{}:1", run.inner_uid, run.uid);
        cmd.args(["--user", &ids, "--group", &ids])
            .arg("--bindmount_ro")
            .arg(bind(run.harness_dir, Path::new(JAIL_HARNESS)))
            .args([
                "--mount",
                &format!("none:/tmp:tmpfs:size={},mode=0700", run.limits.tmp_bytes),
            ]);
        for mask in run.masks {
            cmd.arg("--bindmount_ro")
                .arg(bind(&mask.source, &mask.target));
        }
        PathBuf::from(JAIL_HARNESS)
    } else {
        let id = run.uid.to_string();
        cmd.args(["--user", &id, "--group", &id]);
        run.harness_dir.to_owned()
    };
    let (cwd, _) = jail_paths(run.profile, run.workdir);
    cmd.arg("--cwd").arg(&cwd);
    for (name, value) in script_env(run.profile, run.workdir) {
        let mut pair = OsString::from(format!("{name}="));
        pair.push(&value);
        cmd.arg("--env").arg(pair);
    }
    cmd.arg("--").arg(&run.config.python);
    match run.python {
        Python::Args(args) => cmd.args(args),
        Python::Harness(settings) => cmd
            .args(PYTHON_FLAGS)
            .arg(harness.join(HARNESS_FILE))
            .arg(settings),
    };
    cmd.env_clear()
        .current_dir(run.workdir.unwrap_or(Path::new("/")));
    cmd
}

/// `source:target`, as nsjail's bind flags take it.
fn bind(source: &Path, target: &Path) -> OsString {
    let mut bind = OsString::from(source);
    bind.push(":");
    bind.push(target);
    bind
}

/// The warm path's jail: where the zygote lives (see `zygote.rs`).
#[derive(Debug)]
pub struct ZygoteJail<'a> {
    pub config: &'a SandboxConfig,
    pub profile: Profile,
    /// Where the instance installed the service's Python on the host.
    pub harness_dir: &'a Path,
    /// The zygote's own host uid and gid (root inside its user namespace).
    pub uid: u32,
    /// The slots' host uids, which its children take.
    pub slot_uids: std::ops::Range<u32>,
}

/// The uid (and gid) the slot with host uid `uid` has inside a namespaced jail, cold or warm:
/// the zygote's user namespace maps the slots from 1 up, and a cold jail is given the same.
pub fn inner_uid(slot_uids: &std::ops::Range<u32>, uid: u32) -> u32 {
    uid - slot_uids.start + 1
}

/// The zygote's jail. Strict: the profile's config with what a zygote needs on top. It stays
/// up (no time limit); it keeps its capabilities, which inside its user namespace let it build
/// its children's jails, and it never runs user code; its children's uids are mapped (inside
/// uid `n + 1` is the slot uid `first + n`, as [`inner_uid`] says); `/tmp` exists for them to
/// mount over. Without namespaces (`cloudrun`) there is no jail to build: nsjail would only
/// exec the zygote as root with its capabilities, which it needs to give each child its own
/// uid, and under gVisor nsjail cannot run as root at all (see [`build`]); so the zygote is
/// started directly, in a session of its own with the same empty environment, and each child
/// drops root itself before the harness runs. The control socket is descriptor 3.
pub fn zygote(jail: &ZygoteJail<'_>) -> Command {
    let mut cmd = Command::new(SETSID);
    cmd.env_clear();
    let dir = if jail.profile.namespaced() {
        cmd.arg(&jail.config.nsjail)
            .arg("--config")
            .arg(jail.config.profile_dir.join(jail.profile.config_file()))
            .args([
                "--pass_fd",
                &FDS.result.to_string(),
                "--time_limit",
                "0",
                "--keep_caps",
            ]);
        let own = format!("0:{}:1", jail.uid);
        let slots = format!("1:{}:{}", jail.slot_uids.start, jail.slot_uids.len());
        for ids in [&own, &slots] {
            cmd.args(["--user", ids, "--group", ids]);
        }
        cmd.arg("--bindmount_ro")
            .arg(bind(jail.harness_dir, Path::new(JAIL_HARNESS)))
            .args(["--mount", "none:/tmp:tmpfs:size=4096", "--cwd", "/"]);
        for (name, value) in script_env(jail.profile, None) {
            let mut pair = OsString::from(format!("{name}="));
            pair.push(&value);
            cmd.arg("--env").arg(pair);
        }
        cmd.arg("--");
        PathBuf::from(JAIL_HARNESS)
    } else {
        cmd.envs(script_env(jail.profile, Some(Path::new("/"))));
        jail.harness_dir.to_owned()
    };
    cmd.arg(&jail.config.python)
        .args(PYTHON_FLAGS)
        .arg(dir.join(ZYGOTE_FILE))
        .current_dir(jail.harness_dir);
    cmd
}

/// Where a script starts and where its temp directory is, as the script sees them: a
/// namespaced jail has a private `/tmp` and starts there; without namespaces both are on the
/// host, in the execution's directory.
pub fn jail_paths(profile: Profile, workdir: Option<&Path>) -> (PathBuf, PathBuf) {
    match workdir {
        Some(workdir) if !profile.namespaced() => (workdir.to_owned(), workdir.join(TMP_DIR)),
        _ => (PathBuf::from("/tmp"), PathBuf::from("/tmp")),
    }
}

/// A script's whole environment: `PATH`, its temp directory as `TMPDIR` and `HOME`, and
/// single-threaded BLAS and OpenMP pools (so numpy stays inside the process limit).
pub fn script_env(profile: Profile, workdir: Option<&Path>) -> Vec<(&'static str, OsString)> {
    let (_, tmp) = jail_paths(profile, workdir);
    let mut env = vec![
        ("PATH", OsString::from("/usr/local/bin:/usr/bin:/bin")),
        ("TMPDIR", tmp.clone().into_os_string()),
        ("HOME", tmp.into_os_string()),
        // What Python's locale coercion would set anyway (PEP 538): stated, so a warm child,
        // whose environment is replaced after the interpreter started, has it too.
        ("LC_CTYPE", OsString::from("C.UTF-8")),
    ];
    env.extend(THREAD_ENV.map(|name| (name, OsString::from("1"))));
    env
}

/// nsjail's own `time_limit` is whole seconds and only a backstop: the service enforces the
/// real limit in milliseconds (and in `-Me` mode nsjail does not enforce it at all).
fn backstop_secs(limits: &Limits) -> u64 {
    limits.time_limit_ms.div_ceil(1000) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(cmd: &Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    fn has(args: &[String], pair: [&str; 2]) -> bool {
        args.windows(2).any(|w| w == pair)
    }

    fn run<'a>(
        config: &'a SandboxConfig,
        limits: &'a Limits,
        profile: Profile,
        cgroups: &'a [PathBuf],
    ) -> Run<'a> {
        Run {
            config,
            limits,
            profile,
            workdir: (!profile.namespaced()).then_some(Path::new("/tmp/pyexec-abc/run-1")),
            harness_dir: Path::new("/tmp/pyexec-abc/harness"),
            uid: 990_001,
            inner_uid: 2,
            cgroup_dirs: cgroups,
            python: Python::Harness("{}"),
            masks: &[],
        }
    }

    #[test]
    fn strict_maps_the_slot_s_inner_uid_and_binds_only_the_harness() {
        let config = SandboxConfig::default();
        let limits = Limits {
            time_limit_ms: 2500,
            ..Limits::default()
        };
        let cmd = build(&run(&config, &limits, Profile::Strict, &[]));
        let args = argv(&cmd);
        assert_eq!(cmd.as_std().get_program(), SETSID);
        assert_eq!(args[0], "/opt/pyexec/bin/nsjail");
        assert!(has(&args, ["--config", "nsjail/strict.cfg"]), "{args:?}");
        assert!(has(&args, ["--time_limit", "4"]), "{args:?}");
        assert!(
            has(&args, ["--user", "2:990001:1"]) && has(&args, ["--group", "2:990001:1"]),
            "{args:?}"
        );
        assert!(
            has(
                &args,
                ["--bindmount_ro", "/tmp/pyexec-abc/harness:/harness"]
            ),
            "{args:?}"
        );
        assert!(
            has(
                &args,
                ["--mount", "none:/tmp:tmpfs:size=67108864,mode=0700"]
            ),
            "{args:?}"
        );
        assert!(
            has(&args, ["--cwd", "/tmp"]) && has(&args, ["--env", "TMPDIR=/tmp"]),
            "{args:?}"
        );
        assert!(
            has(&args, ["--pass_fd", "3"])
                && has(&args, ["--pass_fd", "5"])
                && has(&args, ["--log_fd", "4"]),
            "{args:?}"
        );
        let jailed = &args[args.iter().position(|a| a == "--").unwrap() + 1..];
        assert_eq!(
            jailed,
            [
                "/opt/pyexec/sandbox/bin/python3",
                "-I",
                "-u",
                "-X",
                "utf8",
                "-B",
                "/harness/harness.py",
                "{}"
            ]
        );
        assert_eq!(
            cmd.as_std().get_envs().count(),
            0,
            "nsjail itself gets an empty environment"
        );
    }

    #[test]
    fn cloudrun_drops_to_the_slot_uid_before_nsjail_in_the_host_workdir() {
        let config = SandboxConfig::default();
        let limits = Limits::default();
        let args = argv(&build(&run(&config, &limits, Profile::CloudRun, &[])));
        assert_eq!(
            args[..10],
            [
                SETPRIV,
                "--reuid",
                "990001",
                "--regid",
                "990001",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
                "/opt/pyexec/bin/nsjail"
            ]
        );
        assert!(has(&args, ["--config", "nsjail/cloudrun.cfg"]), "{args:?}");
        assert!(
            has(&args, ["--user", "990001"]) && has(&args, ["--group", "990001"]),
            "{args:?}"
        );
        assert!(has(&args, ["--cwd", "/tmp/pyexec-abc/run-1"]), "{args:?}");
        assert!(
            has(&args, ["--env", "TMPDIR=/tmp/pyexec-abc/run-1/tmp"]),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a == "--bindmount_ro"), "{args:?}");
        assert!(
            args.iter()
                .any(|a| a == "/tmp/pyexec-abc/harness/harness.py"),
            "{args:?}"
        );
    }

    #[test]
    fn with_a_cgroup_the_jail_joins_it_before_nsjail_starts() {
        let config = SandboxConfig::default();
        let limits = Limits::default();
        let dirs = [
            PathBuf::from("/sys/fs/cgroup/memory/pyexec/x"),
            PathBuf::from("/sys/fs/cgroup/pids/pyexec/x"),
        ];
        let cmd = build(&run(&config, &limits, Profile::Strict, &dirs));
        let args = argv(&cmd);
        assert_eq!(cmd.as_std().get_program(), SETSID);
        assert_eq!(args[..2], ["/bin/sh", "-c"]);
        assert_eq!(
            args[4..8],
            [
                dirs[0].to_str().unwrap(),
                dirs[1].to_str().unwrap(),
                "--",
                "/opt/pyexec/bin/nsjail"
            ]
        );
    }

    #[test]
    fn cold_and_warm_give_a_slot_the_same_inner_uid() {
        let slots = 990_000..990_004;
        assert_eq!(inner_uid(&slots, 990_000), 1);
        assert_eq!(inner_uid(&slots, 990_003), 4);
    }
}
