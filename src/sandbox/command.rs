//! Builds the nsjail command line for one execution. Pure: it spawns nothing, so the argv is
//! unit-tested. The static policy lives in the profile file (`nsjail/*.cfg`); only per-run
//! values are flags here, so a second profile is a file, not a rewrite.

use std::path::Path;

use tokio::process::Command;

use super::process::ExtraFds;
use crate::config::{Limits, SandboxConfig};
use crate::harness::{HARNESS_FILE, SCRIPT_FILE};

/// The descriptors every execution uses: 3 is passed into the jail for the result frames,
/// 4 carries nsjail's own log and is closed before the script starts.
pub const FDS: ExtraFds = ExtraFds { result: 3, log: 4 };

/// The private temp directory inside an execution's directory, exported as TMPDIR and HOME.
pub const TMP_DIR: &str = "tmp";

/// nsjail's own `time_limit` is whole seconds and only a backstop: the service enforces the
/// real limit in milliseconds (and in `-Me` mode nsjail does not enforce it at all).
fn backstop_secs(limits: &Limits) -> u64 {
    limits.time_limit_ms.div_ceil(1000) + 1
}

/// The command that runs the harness on the script in `workdir`.
pub fn nsjail(config: &SandboxConfig, limits: &Limits, workdir: &Path) -> Command {
    let tmp = workdir.join(TMP_DIR);
    let mut cmd = Command::new(&config.nsjail);
    cmd.arg("--config")
        .arg(&config.profile)
        .args([
            "--log_fd",
            &FDS.log.to_string(),
            "--pass_fd",
            &FDS.result.to_string(),
        ])
        .args([
            "--user",
            &config.uid.to_string(),
            "--group",
            &config.gid.to_string(),
        ])
        .args(["--time_limit", &backstop_secs(limits).to_string()])
        .arg("--cwd")
        .arg(workdir)
        .arg("--env")
        .arg(env_var("TMPDIR", &tmp))
        .arg("--env")
        .arg(env_var("HOME", &tmp))
        .arg("--")
        .arg(&config.python)
        // Isolated mode (no env, no user site, no script dir on sys.path), unbuffered so output
        // written before a kill is not lost, UTF-8 whatever the locale, no bytecode writes.
        .args(["-I", "-u", "-X", "utf8", "-B", HARNESS_FILE])
        .args([
            FDS.result.to_string(),
            limits.result_bytes.to_string(),
            SCRIPT_FILE.to_owned(),
        ])
        .env_clear()
        .current_dir(workdir);
    cmd
}

fn env_var(name: &str, path: &Path) -> std::ffi::OsString {
    let mut pair = std::ffi::OsString::from(format!("{name}="));
    pair.push(path);
    pair
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

    #[test]
    fn per_run_values_are_flags_and_the_policy_is_the_profile() {
        let config = SandboxConfig::default();
        let limits = Limits {
            time_limit_ms: 2500,
            ..Limits::default()
        };
        let cmd = nsjail(&config, &limits, Path::new("/tmp/pyexec-abc"));
        let args = argv(&cmd);
        let has = |pair: [&str; 2]| args.windows(2).any(|w| w == pair);
        assert!(has(["--config", "nsjail/cloudrun.cfg"]), "{args:?}");
        assert!(has(["--time_limit", "4"]), "{args:?}");
        assert!(
            has(["--user", "65534"]) && has(["--group", "65534"]),
            "{args:?}"
        );
        assert!(
            has(["--pass_fd", "3"]) && has(["--log_fd", "4"]),
            "{args:?}"
        );
        assert!(has(["--cwd", "/tmp/pyexec-abc"]), "{args:?}");
        assert!(has(["--env", "TMPDIR=/tmp/pyexec-abc/tmp"]), "{args:?}");
        let jailed = &args[args.iter().position(|a| a == "--").unwrap() + 1..];
        assert_eq!(jailed[0], "/opt/pyexec/sandbox/bin/python3");
        assert_eq!(
            jailed[jailed.len() - 4..],
            ["harness.py", "3", "16777216", "main.py"]
        );
        assert_eq!(
            cmd.as_std().get_envs().count(),
            0,
            "nsjail itself gets an empty environment"
        );
    }
}
