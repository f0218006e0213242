//! The container image, built and run for real with podman: what `make test` can say about
//! the Dockerfile without a Docker engine or a registry. It builds the image on local
//! stand-ins of its base images (`scripts/image-stand-ins.sh`), checks what the image holds
//! (its size; no compiler, test tool or build-time CA bundle), then runs it three ways: with
//! `--privileged`, where every namespace and writable cgroups make the `strict` profile;
//! without, where podman's default capabilities and read-only cgroups leave `cloudrun` with
//! rlimits; and under gVisor's `runsc` (`scripts/setup.sh` installs it), the kernel of Cloud
//! Run's first generation, which refuses namespaces and whose cgroups do not hold a memory
//! limit, so `auto` must come up on `cloudrun` with rlimits and the watchdog. Each run must come
//! up healthy in the profile its mode allows, answer the API (input and files included, and a
//! streamed answer whose first line comes while the script runs), hold
//! against the part of the escape suite whose outcome does not depend on the suite's small
//! limits, leave no process of an execution behind, and exit 0 on `podman stop`. Under gVisor
//! it also measures `return 1` and the pandas script, warm and cold (a second container with
//! the warm path off).
//!
//! Podman runs as these hosts need: `--isolation=chroot` builds and the `runc` runtime (crun
//! cannot handle their hybrid cgroups), ulimits the host allows (podman's defaults exceed
//! them), the host's network with the service on a free loopback port (nothing else is ever
//! talked to), and the host's CA bundle mounted into the build (downloads are re-signed).
//! The figures (image size, build time, start to healthy per mode, the latencies under gVisor,
//! total) go to `target/image-report.json` and to stderr.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::escape_cases::{self, Case, Expect, Placeholders, cases, mismatch};
use common::events::{Events, result_of};
use serde_json::{Value, json};

/// The image the test builds (and leaves, so the next build reuses its layers).
const IMAGE: &str = "localhost/pyexec:test";
/// Its build stage, tagged so that its layers stay cached too.
const BUILD_STAGE_IMAGE: &str = "localhost/pyexec:test-build-stage";
/// The label the stand-ins carry, and every image built on them inherits.
const STAND_IN_LABEL: &str = "io.pyexec.stand-in.recipe";
/// Podman's default ulimits exceed what this host allows; these it does.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=10000:10000",
    "--ulimit",
    "nproc=32768:32768",
];
/// The largest image accepted, in MB (10^6 bytes, as podman counts). The image measured
/// 381 MB on the stand-ins (numpy and pandas are half of it); a compiler, the Rust toolchain
/// or the test tools slipping into the runtime stage would each cost 60 MB or far more.
const IMAGE_BUDGET_MB: u64 = 450;
/// The host's CA bundle: what the build's downloads trust, and what the image must not hold.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// gVisor's runtime, as `scripts/setup.sh` installs it.
const RUNSC: &str = "/opt/pyexec/runsc/runsc";
/// Requests per latency figure under gVisor, warm and cold.
const LATENCY_SAMPLES: usize = 15;
/// The pandas script the API checks and the latency figures use.
const PANDAS_SCRIPT: &str = "import numpy as np\nimport pandas as pd\n\ndef main():\n    df = pd.DataFrame({\"x\": np.arange(5), \"y\": np.arange(5) ** 2})\n    print(df.describe().loc[\"mean\"].to_dict())\n    return {\"rows\": len(df), \"y_sum\": int(df[\"y\"].sum())}\n";

/// How the container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// runc, `--privileged`: every namespace, writable cgroups.
    Privileged,
    /// runc with podman's default capabilities: no namespaces, read-only cgroups.
    Unprivileged,
    /// gVisor (`runsc`), as Cloud Run's first generation runs containers.
    Gvisor,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Unprivileged => "unprivileged",
            Self::Gvisor => "gvisor",
        }
    }

    /// The profile `auto` must come up on.
    fn profile(self) -> &'static str {
        match self {
            Self::Privileged => "strict",
            Self::Unprivileged | Self::Gvisor => "cloudrun",
        }
    }
}

/// The escape cases run against the container: those whose outcome is the same under the
/// image's default limits as under the suite's small ones, and that do not depend on the test
/// process being the service. Left to tests/it/escape.rs: the time and CPU limits (the defaults
/// would take 30 s and 60 s), the size-dependent cases, and `fork_bomb`, which under the
/// defaults' 64 processes of 512 MiB together, rlimits only, meets the memory limit or the
/// process limit first depending on timing.
const ESCAPE_CASES: &[&str] = &[
    "read_host_files",
    "read_service_files",
    "read_service_process",
    "read_environment",
    "read_proc_1_environ",
    "see_host_processes",
    "write_outside_tmp",
    "tmp_visible_to_the_next_execution",
    "list_a_concurrent_execution_s_files",
    "find_the_previous_execution_s_traces",
    "connect_to_loopback",
    "connect_to_a_host_unix_socket",
    "raw_and_netlink_sockets",
    "see_interfaces_and_routes",
    "capabilities",
    "become_root",
    "privileged_syscalls",
    "sysv_ipc_and_message_queues",
    "kill_the_parent",
    "kill_every_process",
    "outlive_the_execution",
    "share_the_cpu_unfairly",
    "grow_socket_buffers",
    "limits_leave_room_for_numpy_and_pandas",
    "thread_bomb",
    "memory_bomb",
    "open_files",
    "huge_stdout",
    "ctypes_segfault",
    "exit_137",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_runs_each_profile_and_stops_cleanly() {
    let started = Instant::now();
    let podman_version = podman(&["--version"]);
    assert!(
        podman_version.status.success(),
        "podman does not run: `make test` installs it (scripts/setup.sh)"
    );

    let stand_ins_started = Instant::now();
    let build_args = stand_ins();
    let stand_ins_secs = stand_ins_started.elapsed().as_secs_f64();

    let build_started = Instant::now();
    build(&build_args);
    let build_secs = build_started.elapsed().as_secs_f64();

    let size_mb = check_image();

    let mut modes = BTreeMap::new();
    for mode in [Mode::Privileged, Mode::Unprivileged, Mode::Gvisor] {
        modes.insert(mode.name(), run_mode(mode).await);
    }
    let gvisor_cold = gvisor_cold().await;

    let report = json!({
        "image": IMAGE,
        "image_size_mb": size_mb,
        "stand_ins_secs": round(stand_ins_secs),
        "build_secs": round(build_secs),
        "escape_cases_per_mode": ESCAPE_CASES.len(),
        "modes": modes,
        "gvisor_cold": gvisor_cold,
        "total_secs": round(started.elapsed().as_secs_f64()),
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image-report.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!(
        "image report ({}):\n{}",
        path.display(),
        serde_json::to_string_pretty(&report).unwrap()
    );
}

fn round(secs: f64) -> f64 {
    (secs * 10.0).round() / 10.0
}

/// Runs podman with these arguments and waits for it.
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run podman (`make test` installs it): {error}"))
}

/// Runs podman and returns its stdout; a failure fails the test with its stderr.
fn podman_ok(args: &[&str]) -> String {
    let output = podman(args);
    assert!(
        output.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Makes (or finds current) the stand-in base images; their names, as `--build-arg`s.
fn stand_ins() -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image-stand-ins.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "{} failed", script.display());
    let args: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| line.contains('='))
        .map(str::to_owned)
        .collect();
    assert_eq!(args.len(), 2, "BUILD_IMAGE and RUNTIME_IMAGE: {args:?}");
    args
}

/// Builds the repository's Dockerfile as `IMAGE` (and tags its build stage); the build's
/// output goes to `target/image-build.log`, whose end a failure shows.
fn build(build_args: &[String]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let log_path = Path::new(root).join("target/image-build.log");
    std::fs::create_dir_all(log_path.parent().unwrap()).unwrap();
    let log = std::fs::File::create(&log_path).unwrap();
    // Downloads in the build are re-signed on these machines: the host's bundle, alone in a
    // directory of its own, is mounted on the bases' empty /mnt for the build's RUN steps
    // (as the Dockerfile says), so it is in no layer.
    let ca_dir = Path::new(root).join("target/image-build-ca");
    let mut volume = Vec::new();
    if Path::new(HOST_CA_BUNDLE).exists() {
        std::fs::create_dir_all(&ca_dir).unwrap();
        std::fs::copy(HOST_CA_BUNDLE, ca_dir.join("ca.pem")).unwrap();
        volume = vec![
            "--volume".to_owned(),
            format!("{}:/mnt:ro", ca_dir.display()),
        ];
    }
    let podman_build = |extra: &[&str]| {
        let mut command = Command::new("podman");
        command
            .args([
                "build",
                "--isolation=chroot",
                "--pull=never",
                "--format",
                "docker",
            ])
            .args(ULIMITS)
            .args(&volume)
            .args(extra)
            .args(["--file", "Dockerfile"]);
        for arg in build_args {
            command.args(["--build-arg", arg]);
        }
        command
            .arg(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log.try_clone().unwrap())
            .status()
            .unwrap()
            .success()
    };
    // The build stage gets a tag too (every step is cached by then): untagged, its last image
    // would be pruned below, and its parents with it, the dependencies' layer among them.
    let built = podman_build(&["--tag", IMAGE])
        && podman_build(&["--target", "build", "--tag", BUILD_STAGE_IMAGE]);
    let _ = std::fs::remove_dir_all(&ca_dir);
    if !built {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "podman build failed ({}):\n{}",
            log_path.display(),
            tail.join("\n")
        );
    }
    // What earlier builds left untagged (the images these replaced, with the layers only they
    // used) would pile up with every change; those made on the stand-ins are this test's
    // alone (they carry the stand-ins' label), so they go.
    let _ = podman(&[
        "image",
        "prune",
        "--force",
        "--filter",
        &format!("label={STAND_IN_LABEL}"),
    ]);
}

/// Checks what the image holds; its size in MB.
fn check_image() -> u64 {
    let inspect: Value = serde_json::from_str(&podman_ok(&["image", "inspect", IMAGE])).unwrap();
    let image = &inspect[0];
    let size_mb = image["Size"].as_u64().unwrap() / 1_000_000;
    assert!(
        size_mb <= IMAGE_BUDGET_MB,
        "the image is {size_mb} MB, over its budget of {IMAGE_BUDGET_MB} MB"
    );
    assert!(
        !image["Healthcheck"].is_null(),
        "HEALTHCHECK kept (docker format): {image}"
    );
    // The CA bundle reaches the build through a mount only: never the environment or a layer.
    let env = image["Config"]["Env"].to_string();
    for name in [
        "PIP_CERT",
        "CARGO_HTTP_CAINFO",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
    ] {
        assert!(
            !env.contains(name),
            "the image's environment sets {name}: {env}"
        );
    }
    let history = podman_ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE]);
    assert!(!history.contains("BEGIN CERTIFICATE"), "{history}");

    let mounted = MountedImage::mount();
    check_no_build_tools(&mounted.path);
    check_no_build_ca(&mounted.path);
    size_mb
}

/// No compiler, toolchain, source tree or test tool in the runtime stage.
fn check_no_build_tools(root: &Path) {
    let present = |path: &str| {
        root.join(path.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    };

    let compilers = [
        "/usr/bin/gcc",
        "/usr/bin/cc",
        "/usr/bin/c++",
        "/usr/bin/g++",
        "/usr/bin/ld",
        "/usr/bin/as",
        "/usr/bin/make",
        "/usr/lib/gcc",
        "/usr/libexec/gcc",
        "/usr/local/cargo",
        "/usr/local/rustup",
        "/usr/bin/cargo",
        "/usr/bin/rustc",
        "/src",
    ];
    let tools = [
        "/opt/pyexec/tools",
        "/usr/bin/podman",
        "/usr/bin/shellcheck",
        "/usr/bin/chromium",
        "/usr/bin/chromedriver",
        "/usr/bin/debootstrap",
        "/usr/local/bin/hadolint",
        "/app/tests",
        "/app/target",
    ];
    let found: Vec<&str> = compilers
        .iter()
        .chain(&tools)
        .copied()
        .filter(|path| present(path))
        .collect();
    assert!(found.is_empty(), "the runtime image holds {found:?}");
    for dir in ["/usr/bin", "/usr/local/bin", "/opt/pyexec/sandbox/bin"] {
        let names = file_names(&root.join(dir.trim_start_matches('/')));
        let tools: Vec<&String> = names
            .iter()
            .filter(|name| {
                name.starts_with("gcc")
                    || name.starts_with("clang")
                    || name.contains("-linux-gnu-")
                    || ["pytest", "py.test", "schemathesis", "hadolint"].contains(&name.as_str())
            })
            .collect();
        assert!(tools.is_empty(), "{dir} holds {tools:?}");
    }
    let app: BTreeSet<String> = file_names(&root.join("app"));
    assert_eq!(
        app,
        ["config", "nsjail", "scripts"].map(str::to_owned).into(),
        "/app holds only what the service reads"
    );
}

/// The build's CA bundle: mounted at /mnt during the build, never left behind, and no
/// certificate this host adds to Debian's own anywhere an image keeps CAs or files.
fn check_no_build_ca(root: &Path) {
    let mnt = file_names(&root.join("mnt"));
    assert!(mnt.is_empty(), "/mnt holds {mnt:?}");
    if let Ok(bundle) = std::fs::read(HOST_CA_BUNDLE) {
        let host_only = host_only_certificates(&bundle);
        let mut leaks = Vec::new();
        for dir in [
            "etc",
            "usr/local",
            "usr/share/ca-certificates",
            "usr/lib/ssl",
            "opt",
            "root",
            "app",
            "run",
            "tmp",
            "var",
        ] {
            find_leaks(&root.join(dir), &bundle, &host_only, &mut leaks);
        }
        assert!(
            leaks.is_empty(),
            "the host's CA certificates are in {leaks:?}"
        );
    }
}

/// The image's file system, mounted read-only on the host while the value lives.
struct MountedImage {
    path: PathBuf,
}

impl MountedImage {
    fn mount() -> Self {
        let path = podman_ok(&["image", "mount", IMAGE]).trim().to_owned();
        Self { path: path.into() }
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = podman(&["image", "unmount", IMAGE]);
    }
}

/// The names in a directory (none when it is missing).
fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The first base64 line of each certificate in the host's bundle that Debian's own CA set
/// (`/usr/share/ca-certificates`) lacks: the CAs this machine adds, e.g. the one that
/// re-signs downloads. Empty on a host that adds none.
fn host_only_certificates(bundle: &[u8]) -> Vec<String> {
    let mut debian = BTreeSet::new();
    let mut stack = vec![PathBuf::from("/usr/share/ca-certificates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                debian.extend(first_lines(&text));
            }
        }
    }
    first_lines(&String::from_utf8_lossy(bundle))
        .into_iter()
        .filter(|line| !debian.contains(line))
        .collect()
}

/// The first base64 line of every PEM certificate in `text`.
fn first_lines(text: &str) -> Vec<String> {
    let mut lines = text.lines();
    let mut found = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim() == "-----BEGIN CERTIFICATE-----"
            && let Some(first) = lines.next()
        {
            found.push(first.trim().to_owned());
        }
    }
    found
}

/// Files under `dir` (never following links) that are the host's bundle or contain one of
/// its host-only certificates.
fn find_leaks(dir: &Path, bundle: &[u8], host_only: &[String], leaks: &mut Vec<PathBuf>) {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            // Certificate stores are text; big files are libraries and data.
            if !meta.is_file() || meta.len() > 4 << 20 {
                continue;
            }
            let Ok(data) = std::fs::read(entry.path()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&data);
            if data == bundle || host_only.iter().any(|line| text.contains(line.as_str())) {
                leaks.push(entry.path());
            }
        }
    }
}

/// A container of the test's, removed (killed first if need be) when dropped, so a failed
/// assertion never leaves one running.
struct Container {
    name: String,
    mode: Mode,
    /// When `podman run` was called.
    launched: Instant,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

impl Container {
    /// Every JSON line the service logged so far.
    fn events(&self) -> Vec<Value> {
        let output = podman(&["logs", &self.name]);
        [output.stdout, output.stderr]
            .iter()
            .flat_map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .into_owned()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|line| serde_json::from_str(&line).ok())
            .collect()
    }

    /// The end of the service's log, without the access log's lines: for failure messages.
    fn logs(&self) -> String {
        let output = podman(&["logs", &self.name]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains(r#""message":"request""#))
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn running(&self) -> bool {
        podman_ok(&["inspect", "--format", "{{.State.Running}}", &self.name]).trim() == "true"
    }

    /// Runs `command` in the container (as root) and returns its stdout.
    fn exec(&self, command: &str) -> String {
        podman_ok(&["exec", &self.name, "sh", "-c", command])
    }

    /// The service's pid as processes in the container see it: tini is the container's
    /// process 1, the service its first child.
    fn service_pid(&self) -> u32 {
        self.exec("cat /proc/1/task/1/children")
            .split_whitespace()
            .next()
            .expect("tini runs the service")
            .parse()
            .unwrap()
    }

    /// Processes running as one of `uids`. Under runc the container shares the host's uids,
    /// so the host's /proc shows them, a process that left the container's pid namespace
    /// included; gVisor's processes exist only inside its kernel, so its own /proc is read.
    fn processes_of(&self, uids: &std::ops::Range<u32>) -> Vec<String> {
        if self.mode != Mode::Gvisor {
            return uids.clone().flat_map(common::processes_of).collect();
        }
        let listing = self.exec(
            "for status in /proc/[0-9]*/status; do \
               printf '%s %s\\n' \"$(sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p' \"$status\")\" \
               \"$(sed -n 's/^Name:[[:space:]]*//p' \"$status\")\"; \
             done 2>/dev/null",
        );
        listing
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(uid, _)| uid.parse().is_ok_and(|uid: u32| uids.contains(&uid)))
            .map(|(uid, name)| format!("uid {uid}: {name}"))
            .collect()
    }

    /// Waits (at most 2 s) for no process of `uids` to be left; what is left then.
    async fn processes_left(&self, uids: &std::ops::Range<u32>) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = self.processes_of(uids);
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Container {
    /// Starts the image in the background in `mode`, serving on `port`, with `env` added.
    fn start(mode: Mode, port: u16, env: &[&str]) -> Self {
        let name = format!("pyexec-image-test-{}-{}", std::process::id(), mode.name());
        let _ = podman(&["rm", "--force", "--time", "0", &name]);
        let runtime = match mode {
            Mode::Gvisor => RUNSC,
            Mode::Privileged | Mode::Unprivileged => "runc",
        };
        let mut args: Vec<String> = ["run", "--detach", "--name", &name, "--runtime", runtime]
            .map(str::to_owned)
            .into();
        args.extend(ULIMITS.map(str::to_owned));
        match mode {
            Mode::Privileged => args.push("--privileged".into()),
            // gVisor's own network stack would have no route to the test; with the host's,
            // as on Cloud Run, the service listens where the test can reach it.
            Mode::Gvisor => args.extend(["--runtime-flag", "network=host"].map(str::to_owned)),
            Mode::Unprivileged => {}
        }
        if mode != Mode::Gvisor {
            // Rootful podman without a user namespace shares the host's uids, and a privileged
            // container on cgroup v1 the host's cgroup tree: the container's service takes its
            // block of uids (and the cgroup subtree named after it) under the same flock in
            // /run/pyexec as every instance on the host, so it never takes a block a service on
            // the host holds (nor the other way round). A private /run/pyexec would let both take
            // the first block and sweep each other's processes and cgroups. Under gVisor the
            // container's uids and cgroups are its own kernel's: no host process can meet them.
            args.extend(["--volume", "/run/pyexec:/run/pyexec"].map(str::to_owned));
        }
        for pair in env {
            args.extend(["--env".to_owned(), (*pair).to_owned()]);
        }
        args.extend(
            [
                // The service shares the host's network, on a free port of loopback only.
                "--network",
                "host",
                "--env",
                &format!("PORT={port}"),
                "--env",
                "PYEXEC_HOST=127.0.0.1",
                // Two executions at once (the concurrent cases), whatever the host's CPU count.
                "--env",
                "PYEXEC_MAX_CONCURRENCY=2",
                // The test polls /health itself; podman's own check needs systemd timers.
                "--no-healthcheck",
                IMAGE,
            ]
            .map(str::to_owned),
        );
        // As the service makes it when it is the first instance on the host.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create("/run/pyexec")
            .unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let launched = Instant::now();
        podman_ok(&args);
        Self {
            name,
            mode,
            launched,
        }
    }

    /// Stops the container as Cloud Run would (SIGTERM) and checks it exits 0; how long it took.
    fn stop(&self) -> u128 {
        let stopping = Instant::now();
        podman_ok(&["stop", "--time", "15", &self.name]);
        let stop_ms = stopping.elapsed().as_millis();
        let exit_code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name]);
        assert_eq!(
            exit_code.trim(),
            "0",
            "{}: a clean exit on `podman stop`:\n{}",
            self.mode.name(),
            self.logs()
        );
        stop_ms
    }
}

/// What one mode came to, for the report.
async fn run_mode(mode: Mode) -> Value {
    let port = common::free_port();
    let container = Container::start(mode, port, &[]);
    let client = client();
    let base = format!("http://127.0.0.1:{port}");

    let health = wait_healthy(&client, &base, &container).await;
    let start_to_healthy_ms = container.launched.elapsed().as_millis();
    let expected = mode.profile();
    assert_eq!(health["profile"], expected, "{}: {health}", mode.name());
    let limits = health["isolation"]["limits"].as_str().unwrap().to_owned();
    match mode {
        Mode::Privileged => assert_ne!(
            limits, "rlimits",
            "writable cgroups when privileged: {health}"
        ),
        // gVisor's cgroup file system takes a memory limit it does not enforce: the service must
        // find that out and bound memory itself.
        Mode::Gvisor => assert_eq!(limits, "rlimits", "{health}"),
        Mode::Unprivileged => {}
    }
    if expected == "cloudrun" {
        let failed = health["failed_profiles"].as_array().unwrap();
        assert!(
            failed.len() == 1
                && failed[0]["profile"] == "strict"
                && failed[0]["reason"].is_string(),
            "/health says why strict did not run: {health}"
        );
    }
    assert_eq!(health["path"], "warm", "{}: {health}", mode.name());

    let ready = container
        .events()
        .into_iter()
        .find(|event| event["message"] == "sandbox ready")
        .unwrap_or_else(|| panic!("no `sandbox ready` in the log:\n{}", container.logs()));
    let (first, end) = ready["uids"].as_str().unwrap().split_once("..").unwrap();
    let uids: std::ops::Range<u32> = first.parse().unwrap()..end.parse().unwrap();

    let warm = api_checks(&client, &base, &container).await;
    assert!(
        warm,
        "the warm path runs in the {expected} profile ({})",
        mode.name()
    );
    let failures = escape_checks(&client, &base, &container, port, &uids).await;
    assert!(
        failures.is_empty(),
        "{expected} profile in the container ({}):\n{}",
        mode.name(),
        failures.join("\n")
    );
    let mut report = json!({
        "profile": expected,
        "limits": limits,
        "start_to_healthy_ms": start_to_healthy_ms,
        "pandas_path": if warm { "warm" } else { "cold" },
    });
    if mode == Mode::Gvisor {
        report["warm_p50_ms"] = latencies(&client, &base).await;
    }
    report["stop_ms"] = json!(container.stop());
    report["exit_code"] = json!(0);
    report
}

/// Under gVisor with the warm path off: healthy on `cloudrun`, cold, the API, and the same
/// latencies as warm, for the report.
async fn gvisor_cold() -> Value {
    let port = common::free_port();
    let container = Container::start(Mode::Gvisor, port, &["PYEXEC_WARM=false"]);
    let client = client();
    let base = format!("http://127.0.0.1:{port}");
    let health = wait_healthy(&client, &base, &container).await;
    let start_to_healthy_ms = container.launched.elapsed().as_millis();
    assert_eq!(health["profile"], "cloudrun", "{health}");
    assert_eq!(health["path"], "cold", "{health}");
    assert!(
        health["cold_reason"]
            .as_str()
            .unwrap()
            .contains("sandbox.warm = false"),
        "{health}"
    );
    let warm = api_checks(&client, &base, &container).await;
    assert!(!warm, "the warm path is off");
    let p50 = latencies(&client, &base).await;
    let stop_ms = container.stop();
    json!({
        "start_to_healthy_ms": start_to_healthy_ms,
        "cold_p50_ms": p50,
        "stop_ms": stop_ms,
    })
}

/// The median latency, in ms, of `return 1` and of the pandas script, each over
/// `LATENCY_SAMPLES` requests one after the other (after one of each to warm up).
async fn latencies(client: &reqwest::Client, base: &str) -> Value {
    let mut figures = serde_json::Map::new();
    for (name, script) in [
        ("return_1", "def main():\n    return 1\n"),
        ("pandas", PANDAS_SCRIPT),
    ] {
        let (status, body) = execute(client, base, script).await;
        assert_eq!(status, 200, "{body}");
        let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
        for _ in 0..LATENCY_SAMPLES {
            let started = Instant::now();
            let (status, body) = execute(client, base, script).await;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{body}");
        }
        samples.sort_by(f64::total_cmp);
        figures.insert(name.to_owned(), json!(round(samples[samples.len() / 2])));
    }
    Value::Object(figures)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Polls `/health` until it answers 200 (at most 60 s); its body.
async fn wait_healthy(client: &reqwest::Client, base: &str, container: &Container) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{base}/health")).send().await
            && response.status() == 200
        {
            return response.json().await.unwrap();
        }
        assert!(
            Instant::now() < deadline && container.running(),
            "never healthy:\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// POSTs a script; the status and the body.
async fn execute(client: &reqwest::Client, base: &str, script: &str) -> (u16, Value) {
    let response = client
        .post(format!("{base}/execute"))
        .json(&json!({ "script": script }))
        .send()
        .await
        .unwrap();
    common::read(response).await
}

/// A plain script, a pandas script, a failing one, one that does not compile, and one with
/// input and a file in and a file back, each answered exactly as README.md shows; whether the
/// pandas script ran on the warm path.
async fn api_checks(client: &reqwest::Client, base: &str, container: &Container) -> bool {
    let without_duration = |mut body: Value| {
        body.as_object_mut().unwrap().remove("duration_ms");
        body
    };
    let (status, body) = execute(
        client,
        base,
        "def main():\n    print(\"Hello, World!\")\n    return {\"message\": \"Hello from main\"}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_duration(body),
        json!({"result": {"message": "Hello from main"}, "stdout": "Hello, World!\n",
               "stderr": "", "stdout_truncated": false, "stderr_truncated": false})
    );

    let request_id = format!("image-test-pandas-{}", std::process::id());
    let response = client
        .post(format!("{base}/execute"))
        .header("x-request-id", &request_id)
        .json(&json!({ "script": PANDAS_SCRIPT }))
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        without_duration(body),
        json!({"result": {"rows": 5, "y_sum": 30}, "stdout": "{'x': 2.0, 'y': 6.0}\n",
               "stderr": "", "stdout_truncated": false, "stderr_truncated": false})
    );

    let (status, body) = execute(client, base, "def main():\n    return 1 / 0").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(common::error_code(&body), "script_exception", "{body}");
    assert_eq!(body["phase"], "main", "{body}");
    assert_eq!(body["exception"]["type"], "ZeroDivisionError", "{body}");

    let (status, body) = execute(client, base, "def main(:\n    pass").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(common::error_code(&body), "syntax_error", "{body}");

    let script = "import pandas as pd\n\ndef main(options):\n    sales = pd.read_csv('data/sales.csv')\n    \
                  sales['revenue'] = sales['units'] * sales['price']\n    \
                  sales.to_csv('out.csv', index=False)\n    \
                  return {'rows': len(sales), 'total': sales['revenue'].sum() * options['scale']}\n";
    let response = client
        .post(format!("{base}/execute"))
        .json(&json!({
            "script": script,
            "input": {"scale": 2},
            "files": [{"path": "data/sales.csv", "content": "units,price\n3,2.5\n5,1.0\n"}],
            "return_files": ["out.csv"],
        }))
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"rows": 2, "total": 25.0}), "{body}");
    let csv = "units,price,revenue\n3,2.5,7.5\n5,1.0,5.0\n";
    assert_eq!(
        body["files"],
        json!([{"path": "out.csv", "size": csv.len(), "content": csv, "encoding": "utf-8"}]),
        "{body}"
    );

    streams(client, base).await;

    // The access log says which path ran the script.
    let logged = container
        .events()
        .into_iter()
        .find(|event| {
            event["client_request_id"] == request_id.as_str() && event["message"] == "request"
        })
        .unwrap_or_else(|| panic!("no access log line for {request_id}"));
    logged["path"] == "warm"
}

/// A streamed answer (`Accept: application/x-ndjson`) in this runtime: the first line reaches
/// the client before the script writes its second (the script says when, by the clock client
/// and container share), the last event is the plain answer.
async fn streams(client: &reqwest::Client, base: &str) {
    let script = "import time\ndef main():\n    print('first')\n    time.sleep(1)\n    print(time.time())\n    return 7\n";
    let mut events = Events::script(client, &format!("{base}/execute"), script).await;
    assert_eq!(events.status, 200);
    let seen = events.until_stdout("first\n").await;
    let first_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let seen = seen.unwrap_or_else(|all| panic!("no first line in {all:?}"));
    let rest = events.rest().await;
    let (status, body) = result_of(&rest);
    assert_eq!((status, &body["result"]), (200, &json!(7)), "{body}");
    let stdout = body["stdout"].as_str().unwrap();
    let second: f64 = stdout
        .strip_prefix("first\n")
        .and_then(|rest| rest.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("{stdout:?}"));
    assert!(
        first_at.as_secs_f64() < second,
        "the first line came after the script wrote the second: {seen:?} {rest:?}"
    );
}

/// The chosen escape cases against the container; what went wrong, case by case, with
/// whether anything of an execution outlived it.
async fn escape_checks(
    client: &reqwest::Client,
    base: &str,
    container: &Container,
    port: u16,
    uids: &std::ops::Range<u32>,
) -> Vec<String> {
    let all = cases();
    let known: BTreeSet<&str> = all.iter().map(|case| case.name).collect();
    for name in ESCAPE_CASES {
        assert!(known.contains(name), "no escape case named {name}");
    }
    for (name, _, _) in escape_cases::GVISOR_DIFFERS {
        assert!(
            ESCAPE_CASES.contains(name),
            "{name} does not run under gVisor"
        );
    }
    let values = Placeholders {
        service_pid: container.service_pid(),
        service_port: port,
        nonce: uids.start,
        unix_socket: format!("pyexec-image-{}.sock", uids.start),
        // Well within the default time limit of 30 s, for the cold path under gVisor on a
        // busy machine.
        hold_secs: 5.0,
    };
    // A Unix socket a script must not reach. Under runc the host network is shared, and with
    // it the abstract Unix socket namespace: the test's own (the on-disk one of the suite
    // would be in the host's /tmp, which the container does not see). gVisor keeps Unix
    // sockets in its own kernel: there a listener runs in the container, on both addresses.
    let _listener = if container.mode == Mode::Gvisor {
        for address in [
            format!("@{}", values.unix_socket),
            format!("/tmp/{}", values.unix_socket),
        ] {
            podman_ok(&[
                "exec",
                "--detach",
                &container.name,
                "/usr/bin/python3",
                "-c",
                "import socket, sys, time\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 address = sys.argv[1]\n\
                 s.bind('\\0' + address[1:] if address.startswith('@') else address)\n\
                 s.listen()\n\
                 time.sleep(3600)",
                &address,
            ]);
        }
        None
    } else {
        let address = UnixSocketAddr::from_abstract_name(values.unix_socket.as_bytes()).unwrap();
        Some(UnixListener::bind_addr(&address).unwrap())
    };

    let mut failures = Vec::new();
    for case in all.iter().filter(|case| ESCAPE_CASES.contains(&case.name)) {
        let gvisor = escape_cases::GVISOR_DIFFERS
            .iter()
            .find(|(name, _, _)| *name == case.name)
            .filter(|_| container.mode == Mode::Gvisor);
        let expect = match (container.mode, gvisor) {
            (Mode::Privileged, _) => case.strict,
            (_, Some((_, outcome, _))) => *outcome,
            _ => case.cloudrun,
        };
        if let Some(problem) = run_case(client, base, case, expect, &values).await {
            failures.push(format!("{}: {problem}", case.name));
        }
        let (status, body) = execute(client, base, "def main():\n    return 'still fine'\n").await;
        if status != 200 || body["result"] != "still fine" {
            failures.push(format!("{}: the service broke: {status} {body}", case.name));
        }
        let left = container.processes_left(uids).await;
        if !left.is_empty() {
            failures.push(format!(
                "{}: processes outlived the execution: {left:?}",
                case.name
            ));
        }
    }
    failures
}

/// One case, with its `before` and `during` executions; the mismatch, if any.
async fn run_case(
    client: &reqwest::Client,
    base: &str,
    case: &Case,
    expect: Expect,
    values: &Placeholders,
) -> Option<String> {
    let before = match case.before {
        Some(script) => {
            let (status, body) =
                execute(client, base, &escape_cases::fill(script, values, "")).await;
            if status != 200 {
                return Some(format!("the first execution failed: {body}"));
            }
            body["result"].as_str().unwrap().to_owned()
        }
        None => String::new(),
    };
    let neighbour = match &case.during {
        Some(spec) => match spec.start(client, &format!("{base}/execute"), values).await {
            Ok(events) => Some((spec, events)),
            Err(problem) => return Some(problem),
        },
        None => None,
    };
    let (status, body) = execute(
        client,
        base,
        &escape_cases::fill(case.script, values, &before),
    )
    .await;
    let problem = mismatch(expect, status, &body);
    let harm = match neighbour {
        Some((spec, events)) => spec.harm(events).await,
        None => None,
    };
    match (problem, harm) {
        (Some(problem), Some(harm)) => Some(format!("{problem}; {harm}")),
        (problem, harm) => problem.or(harm),
    }
}
