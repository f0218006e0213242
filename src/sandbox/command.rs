//! Builds the command line for one execution. Pure: it spawns nothing, so the argv is
//! unit-tested. The static policy lives in the profile file (`nsjail/<profile>.cfg`); only
//! per-run values are flags here, so a profile is a file plus a few facts in `profile.rs`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::process::Command;

use super::process::ExtraFds;
use crate::config::{Limits, Profile, SandboxConfig};
use crate::harness::{HARNESS_FILE, JOB_FILE};

/// The descriptors every execution uses: 3 is passed into the jail for the result frames,
/// 4 carries nsjail's own log and is closed before the script starts.
pub const FDS: ExtraFds = ExtraFds { result: 3, log: 4 };

/// The private temp directory inside an execution's directory (profiles without a mount
/// namespace), exported as TMPDIR and HOME.
pub const TMP_DIR: &str = "tmp";

/// Where a namespaced jail sees the execution's directory.
const JAIL_WORKDIR: &str = "/sandbox";

/// The uid and gid scripts have inside a user namespace.
const JAIL_ID: u32 = 65534;

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

/// Everything that varies between executions.
#[derive(Debug)]
pub struct Run<'a> {
    pub config: &'a SandboxConfig,
    pub limits: &'a Limits,
    pub profile: Profile,
    /// The execution's private directory: harness, script and (no mount namespace) `tmp/`.
    pub workdir: &'a Path,
    /// The host uid and gid of the execution's slot.
    pub uid: u32,
    /// The cgroup directories to join, if memory and processes are bounded by a cgroup.
    pub cgroup_dirs: &'a [PathBuf],
    /// What the interpreter runs: the harness, or (the benchmark's baseline) these arguments.
    pub python_args: Option<&'a [&'a str]>,
    /// The seccomp filters the harness installs before any user code, hex-encoded
    /// (`seccomp::filters`).
    pub seccomp: &'a [String],
    /// What covers the host-wide `/proc` counters, bound over them in a namespaced jail.
    pub masks: &'a [super::masks::Mask],
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
        ])
        .args(["--time_limit", &backstop_secs(run.limits).to_string()]);
    if run.profile.namespaced() {
        let ids = format!("{JAIL_ID}:{}:1", run.uid);
        let mut bind = OsString::from(run.workdir);
        bind.push(format!(":{JAIL_WORKDIR}"));
        cmd.args(["--user", &ids, "--group", &ids])
            .arg("--bindmount_ro")
            .arg(bind)
            .args([
                "--mount",
                &format!("none:/tmp:tmpfs:size={}", run.limits.tmp_bytes),
            ]);
        for mask in run.masks {
            let mut bind = OsString::from(&mask.source);
            bind.push(":");
            bind.push(&mask.target);
            cmd.arg("--bindmount_ro").arg(bind);
        }
    } else {
        let id = run.uid.to_string();
        cmd.args(["--user", &id, "--group", &id]);
    }
    let (cwd, _) = jail_paths(run.profile, run.workdir);
    cmd.arg("--cwd").arg(&cwd);
    for (name, value) in script_env(run.profile, run.workdir) {
        let mut pair = OsString::from(format!("{name}="));
        pair.push(&value);
        cmd.arg("--env").arg(pair);
    }
    cmd.arg("--").arg(&run.config.python);
    match run.python_args {
        Some(args) => cmd.args(args),
        // Isolated mode (no env, no user site, no script dir on sys.path), unbuffered so output
        // written before a kill is not lost, UTF-8 whatever the locale, no bytecode writes.
        None => cmd
            .args(["-I", "-u", "-X", "utf8", "-B", HARNESS_FILE])
            .arg(harness_settings(run).to_string())
            .arg(JOB_FILE),
    };
    cmd.env_clear().current_dir(run.workdir);
    cmd
}

/// The warm path's jail: where the zygote lives (see `zygote.rs`).
#[derive(Debug)]
pub struct ZygoteJail<'a> {
    pub config: &'a SandboxConfig,
    pub profile: Profile,
    /// The host directory holding `zygote.py` and `harness.py`.
    pub dir: &'a Path,
    /// The covers of `/proc` entries (`masks.rs`), seen at `/masks` in a namespaced jail.
    pub masks_dir: &'a Path,
    /// The zygote's own host uid and gid (root inside its user namespace).
    pub uid: u32,
    /// The slots' host uids, which its children take.
    pub slot_uids: std::ops::Range<u32>,
}

/// Where a namespaced zygote sees its files.
const ZYGOTE_DIR: &str = "/zygote";

/// The zygote's jail. Strict: the profile's config with what a zygote needs on top. It stays
/// up (no time limit); it keeps its capabilities, which inside its user namespace let it build
/// its children's jails, and it never runs user code; its children's uids are mapped (inside
/// uid `n + 1` is the slot uid `first + n`); `/tmp` and `/sandbox` exist for them to mount
/// over. Without namespaces (`cloudrun`) there is no jail to build: nsjail would only exec the
/// zygote as root with its capabilities, which it needs to give each child its own uid, and
/// under gVisor nsjail cannot run as root at all (see [`build`]); so the zygote is started
/// directly, in a session of its own with the same empty environment, and each child drops
/// root itself before the harness runs. The control socket is descriptor 3.
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
        let mut bind = OsString::from(jail.dir);
        bind.push(format!(":{ZYGOTE_DIR}"));
        let mut masks = OsString::from(jail.masks_dir);
        masks.push(":/masks");
        cmd.arg("--bindmount_ro")
            .arg(bind)
            .arg("--bindmount_ro")
            .arg(masks)
            .args([
                "--mount",
                "none:/tmp:tmpfs:size=4096",
                "--mount",
                &format!("none:{JAIL_WORKDIR}:tmpfs:size=4096"),
                "--cwd",
                "/",
            ]);
        for (name, value) in script_env(jail.profile, Path::new("/")) {
            let mut pair = OsString::from(format!("{name}="));
            pair.push(&value);
            cmd.arg("--env").arg(pair);
        }
        cmd.arg("--");
        PathBuf::from(ZYGOTE_DIR)
    } else {
        cmd.envs(script_env(jail.profile, Path::new("/")));
        jail.dir.to_owned()
    };
    cmd.arg(&jail.config.python)
        .args(["-I", "-u", "-X", "utf8", "-B"])
        .arg(dir.join("zygote.py"))
        .current_dir(jail.dir);
    cmd
}

/// Where a script runs and where its temp directory is, as the script sees them: a
/// namespaced jail has the execution's directory at `/sandbox` and a private `/tmp`; without
/// namespaces both are on the host, in the execution's directory.
pub fn jail_paths(profile: Profile, workdir: &Path) -> (PathBuf, PathBuf) {
    if profile.namespaced() {
        (PathBuf::from(JAIL_WORKDIR), PathBuf::from("/tmp"))
    } else {
        (workdir.to_owned(), workdir.join(TMP_DIR))
    }
}

/// A script's whole environment: `PATH`, its temp directory as `TMPDIR` and `HOME`, and
/// single-threaded BLAS and OpenMP pools (so numpy stays inside the process limit).
pub fn script_env(profile: Profile, workdir: &Path) -> Vec<(&'static str, OsString)> {
    let (_, tmp) = jail_paths(profile, workdir);
    let mut env = vec![
        ("PATH", OsString::from("/usr/local/bin:/usr/bin:/bin")),
        ("TMPDIR", tmp.clone().into_os_string()),
        ("HOME", tmp.into_os_string()),
    ];
    env.extend(THREAD_ENV.map(|name| (name, OsString::from("1"))));
    env
}

/// nsjail's own `time_limit` is whole seconds and only a backstop: the service enforces the
/// real limit in milliseconds (and in `-Me` mode nsjail does not enforce it at all).
fn backstop_secs(limits: &Limits) -> u64 {
    limits.time_limit_ms.div_ceil(1000) + 1
}

/// What the harness needs: where to report, and the rlimits to set on itself before any
/// user code runs. Memory is an address-space limit only where no cgroup bounds it: address
/// space overcounts (numpy maps far more than it touches), so a cgroup is the better bound.
fn harness_settings(run: &Run<'_>) -> serde_json::Value {
    let mut settings = settings(run.limits, !run.cgroup_dirs.is_empty());
    settings["seccomp"] = json!(run.seccomp);
    settings
}

/// The harness's settings but for its seccomp filters (the warm path's zygote holds those).
pub fn settings(limits: &Limits, cgroup: bool) -> serde_json::Value {
    let mut rlimits = json!({
        "NPROC": limits.processes,
        "CPU": [limits.cpu_secs, limits.cpu_secs + 1],
        "FSIZE": limits.file_bytes,
        "NOFILE": limits.open_files,
        "CORE": 0,
    });
    if !cgroup {
        rlimits["AS"] = json!(limits.memory_bytes);
    }
    json!({
        "result_fd": FDS.result,
        "rlimits": rlimits,
        "limits": {
            "result_bytes": limits.result_bytes,
            "memory_bytes": limits.memory_bytes,
            "cpu_secs": limits.cpu_secs,
            "processes": limits.processes,
            "file_bytes": limits.file_bytes,
            "tmp_bytes": limits.tmp_bytes,
            "open_files": limits.open_files,
            "output_files": limits.output_files,
            "output_files_bytes": limits.output_files_bytes,
        },
    })
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
            workdir: Path::new("/tmp/pyexec-abc"),
            uid: 990_001,
            cgroup_dirs: cgroups,
            python_args: None,
            seccomp: &[],
            masks: &[],
        }
    }

    #[test]
    fn strict_maps_the_jail_uid_to_the_slot_and_binds_the_workdir_read_only() {
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
            has(&args, ["--user", "65534:990001:1"]) && has(&args, ["--group", "65534:990001:1"]),
            "{args:?}"
        );
        assert!(
            has(&args, ["--bindmount_ro", "/tmp/pyexec-abc:/sandbox"]),
            "{args:?}"
        );
        assert!(
            has(&args, ["--mount", "none:/tmp:tmpfs:size=67108864"]),
            "{args:?}"
        );
        assert!(
            has(&args, ["--cwd", "/sandbox"]) && has(&args, ["--env", "TMPDIR=/tmp"]),
            "{args:?}"
        );
        assert!(
            has(&args, ["--pass_fd", "3"]) && has(&args, ["--log_fd", "4"]),
            "{args:?}"
        );
        let jailed = &args[args.iter().position(|a| a == "--").unwrap() + 1..];
        assert_eq!(jailed[0], "/opt/pyexec/sandbox/bin/python3");
        assert_eq!(jailed[jailed.len() - 1], "job.json");
        let settings: serde_json::Value = serde_json::from_str(&jailed[jailed.len() - 2]).unwrap();
        assert_eq!(
            settings["rlimits"]["AS"],
            512 << 20,
            "no cgroup: memory is an rlimit"
        );
        assert_eq!(
            cmd.as_std().get_envs().count(),
            0,
            "nsjail itself gets an empty environment"
        );
    }

    #[test]
    fn cloudrun_runs_as_the_slot_uid_in_the_host_workdir() {
        let config = SandboxConfig::default();
        let limits = Limits::default();
        let args = argv(&build(&run(&config, &limits, Profile::CloudRun, &[])));
        assert!(has(&args, ["--config", "nsjail/cloudrun.cfg"]), "{args:?}");
        assert!(
            has(&args, ["--user", "990001"]) && has(&args, ["--group", "990001"]),
            "{args:?}"
        );
        assert!(has(&args, ["--cwd", "/tmp/pyexec-abc"]), "{args:?}");
        assert!(
            has(&args, ["--env", "TMPDIR=/tmp/pyexec-abc/tmp"]),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a == "--bindmount_ro"), "{args:?}");
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
        let settings: serde_json::Value = serde_json::from_str(&args[args.len() - 2]).unwrap();
        assert!(
            settings["rlimits"].get("AS").is_none(),
            "the cgroup bounds memory: {settings}"
        );
        assert_eq!(settings["rlimits"]["NPROC"], 64);
    }
}
