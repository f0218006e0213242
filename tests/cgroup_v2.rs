//! cgroup v2 for real. This host mounts cgroup v1; Kubernetes nodes, Cloud Run's second
//! generation and current distributions mount v2 only. Each test boots a cgroup-v2 guest
//! (`scripts/cgroup-v2-guest.sh`: user-mode Linux with this host's root read-only), starts the
//! service built here in it in the shapes a v2 host gives a service, and calls it from here
//! through a forwarded loopback port:
//! - a unit with delegation (as `deploy/systemd/pyexec.service` asks systemd for): the
//!   service's own group holds its process, so it moves into a leaf before it delegates;
//! - a group shared with a process that is not the service's (the no-internal-processes rule);
//! - a container with its own cgroup namespace, and one whose cgroupfs is read-only (Docker's
//!   default), where the service falls back to rlimits and the watchdog and says why.
//!
//! In each: `/health` names the limits, a script over its memory limit is
//! `memory_limit_exceeded`, the process limit holds, the memory peak is logged, and once the
//! executions are done no group of theirs is left. Small limits throughout: every page fault
//! and fork in the guest is a round trip through ptrace.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The memory limit the guest's services run with, small because page faults are slow there.
const MEMORY_LIMIT: u64 = 64 << 20;
/// The process limit they run with.
const PROCESSES: u32 = 12;
/// How long a guest's service may take to start: the guest has one CPU, slower than the host's
/// by far, and the host may be busy.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// How a service is started in the guest: the shapes a cgroup-v2 host gives a service.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// Its own group, with every controller delegated, as systemd's `Delegate=yes` makes one.
    Unit,
    /// The guest's init group, shared with the shell that started it.
    Shared,
    /// A group of its own seen through its own cgroup namespace, as a container is.
    Container,
    /// The same, with the cgroupfs mounted read-only (a container's default).
    ReadOnly,
}

#[derive(Debug, Clone, Copy)]
struct Instance {
    name: &'static str,
    shape: Shape,
    profile: &'static str,
    warm: bool,
    /// The path `/health` must name.
    path: &'static str,
}

/// A booted guest and the host directory it shares.
struct Guest {
    dir: tempfile::TempDir,
    child: Child,
    /// Host port of each instance, in order.
    ports: Vec<u16>,
}

/// The run script's helpers: start NAME SHAPE PORT writes the service's settings and starts it
/// in its shape; the loop then runs each command the host leaves in `cmd` until `stop` appears.
const RUN_PRELUDE: &str = r#"set -u
settings() { # NAME PORT PROFILE WARM
  cat >"$1.toml" <<EOT
[server]
host = "0.0.0.0"
port = $2
[sandbox]
profile = "$3"
warm = $4
profile_dir = "$REPO/nsjail"
work_root = "/tmp"
max_concurrency = 2
[limits]
memory_bytes = $MEMORY
processes = $PROCESSES
EOT
}
# Runs the command after GROUP in GROUP (created first), once it is there.
in_group() {
  mkdir -p "$1"
  sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$@" &
  until grep -q . "$1/cgroup.procs"; do sleep 0.05; done
}
start() { # NAME SHAPE PORT PROFILE WARM
  settings "$1" "$3" "$4" "$5"
  service="env PYEXEC_CONFIG=$PWD/$1.toml $BIN"
  case $2 in
    unit)
      echo "+memory +pids +cpu" >/sys/fs/cgroup/system.slice/cgroup.subtree_control
      in_group "/sys/fs/cgroup/system.slice/pyexec-$1.service" $service >"$1.log" 2>&1 ;;
    shared)
      $service >"$1.log" 2>&1 & ;;
    container|readonly)
      [ "$2" = readonly ] && ro=",ro" || ro=""
      in_group "/sys/fs/cgroup/container-$1" unshare --cgroup --mount --propagation private \
        sh -c "umount /sys/fs/cgroup && mount -t cgroup2 -o rw$ro cgroup2 /sys/fs/cgroup && exec $service" \
        >"$1.log" 2>&1 ;;
  esac
}
mkdir -p /sys/fs/cgroup/system.slice
"#;

const RUN_LOOP: &str = r"
until [ -e stop ]; do
  if [ -e cmd ]; then bash cmd >cmd.out 2>&1; mv cmd cmd.done; fi
  sleep 0.1
done
kill -TERM $(jobs -p) 2>/dev/null
wait
";

impl Guest {
    /// Boots a guest that starts `instances`, each on a host port of its own.
    fn boot(instances: &[Instance]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pyexec-guest-")
            // Not under /tmp: the guest mounts a /tmp of its own over the host's.
            .tempdir_in("/var/tmp")
            .unwrap();
        let ports: Vec<u16> = instances.iter().map(|_| free_port()).collect();
        let mut run = format!(
            "REPO={repo}\nBIN={bin}\nMEMORY={MEMORY_LIMIT}\nPROCESSES={PROCESSES}\n{RUN_PRELUDE}",
            repo = env!("CARGO_MANIFEST_DIR"),
            bin = env!("CARGO_BIN_EXE_pyexec"),
        );
        for (index, instance) in instances.iter().enumerate() {
            let shape = format!("{:?}", instance.shape).to_lowercase();
            writeln!(
                run,
                "start {} {shape} {} {} {}",
                instance.name,
                8001 + index,
                instance.profile,
                instance.warm
            )
            .unwrap();
        }
        run += RUN_LOOP;
        std::fs::write(dir.path().join("run"), run).unwrap();
        let forwards = ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{port}:{}", 8001 + index));
        let child = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cgroup-v2-guest.sh"))
            .arg(dir.path())
            .args(forwards)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { dir, child, ports }
    }

    fn url(&self, index: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[index])
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the guest has said so far: its console, its run script's output and every
    /// service's log.
    fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        let mut logs = String::new();
        for path in names {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            writeln!(logs, "--- {name}:\n{text}").unwrap();
        }
        logs
    }

    /// Runs `command` with bash in the guest; its output.
    async fn run(&mut self, command: &str) -> String {
        let _ = std::fs::remove_file(self.path("cmd.done"));
        std::fs::write(self.path("cmd"), command).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.path("cmd.done").exists() {
            assert!(
                Instant::now() < deadline && self.child.try_wait().unwrap().is_none(),
                "the guest did not run {command:?}: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::read_to_string(self.path("cmd.out")).unwrap()
    }

    /// Waits until instance `index` answers `/health`; the answer.
    async fn health(&mut self, client: &reqwest::Client, index: usize) -> Value {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = client.get(self.url(index, "/health")).send().await
                && let Ok(body) = response.json::<Value>().await
            {
                return body;
            }
            assert!(
                Instant::now() < deadline && self.child.try_wait().unwrap().is_none(),
                "instance {index} never answered: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the services and the guest; fails the test if the guest's command failed.
    fn stop(mut self) {
        std::fs::write(self.path("stop"), "").unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the guest ended with {status}: {}",
            self.logs()
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // A failed test: the guest and every process of it go (it is a process group of
        // user-mode Linux's own threads and helpers under the script).
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = std::fs::write(self.path("stop"), "");
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn execute(
    client: &reqwest::Client,
    url: &str,
    script: &str,
    request_id: &str,
) -> (u16, Value) {
    let request = client
        .post(url)
        .header("x-request-id", request_id)
        .json(&json!({ "script": script }));
    common::read(request.send().await.unwrap()).await
}

/// Writes 200 MiB against a limit of 64.
const OVER_MEMORY: &str = "def main():\n    return len(b'x' * (200 << 20))\n";
/// Writes 40 MiB and keeps them while it returns.
const PEAK: &str = "def main():\n    held = b'x' * (40 << 20)\n    return len(held)\n";
/// Forks sleeping children until it cannot: how many it started, and why it stopped.
const FORK_UNTIL_REFUSED: &str = r"
import os, time
def main():
    started = 0
    try:
        while started < 100:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            started += 1
    except OSError as error:
        return [started, error.errno]
    return [started, 0]
";

/// Everything the cgroup must hold for one instance, with `limits` the backend `/health` must
/// name; the failures, if any.
async fn check(
    guest: &mut Guest,
    client: &reqwest::Client,
    index: usize,
    instance: &Instance,
    limits: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    let name = instance.name;
    let health = guest.health(client, index).await;
    let seen = (
        health["profile"].as_str(),
        health["isolation"]["limits"].as_str(),
        health["path"].as_str(),
    );
    if seen != (Some(instance.profile), Some(limits), Some(instance.path)) {
        failures.push(format!("{name}: /health says {health}"));
    }
    let url = guest.url(index, "/execute");
    let (status, body) = execute(client, &url, "def main():\n    return 1\n", "one").await;
    if (status, &body["result"]) != (200, &json!(1)) {
        failures.push(format!("{name}: return 1 came back {status} {body}"));
    }
    let (status, body) = execute(client, &url, OVER_MEMORY, "over").await;
    if (status, body["code"].as_str()) != (400, Some("memory_limit_exceeded")) {
        failures.push(format!(
            "{name}: 200 MiB under 64 came back {status} {body}"
        ));
    }
    let (status, body) = execute(client, &url, FORK_UNTIL_REFUSED, "forks").await;
    let started = body["result"][0].as_u64().unwrap_or(u64::MAX);
    if status != 200 || started >= u64::from(PROCESSES) || body["result"][1] != 11 {
        failures.push(format!(
            "{name}: a limit of {PROCESSES} processes let {status} {body}"
        ));
    }
    let peak_id = format!("peak-{name}");
    let (status, body) = execute(client, &url, PEAK, &peak_id).await;
    if status != 200 {
        failures.push(format!("{name}: 40 MiB came back {status} {body}"));
    }
    if limits == "cgroup_v2" {
        let log = std::fs::read_to_string(guest.path(&format!("{name}.log"))).unwrap();
        let peak = logged_memory_peak(&log, &peak_id);
        if !peak.is_some_and(|peak| (40 << 20..=MEMORY_LIMIT).contains(&peak)) {
            failures.push(format!("{name}: memory peak of 40 MiB logged as {peak:?}"));
        }
    }
    failures
}

/// The `memory_peak_bytes` of the access-log line of the request `request_id`.
fn logged_memory_peak(log: &str, request_id: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|line| line.contains(&format!("client_request_id=\"{request_id}\"")))?;
    let (_, after) = line.split_once("memory_peak_bytes=")?;
    after.split_whitespace().next()?.parse().ok()
}

/// The instances' own subtrees (`…/pyexec/uids-<block>`), and every group below them: what
/// executions left.
async fn subtrees_and_leftovers(guest: &mut Guest) -> (usize, Vec<String>) {
    let found = guest
        .run("find /sys/fs/cgroup -type d -path '*/pyexec/uids-*'")
        .await;
    let (subtrees, below): (Vec<&str>, Vec<&str>) = found.lines().partition(|path| {
        path.rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("uids-"))
    });
    (
        subtrees.len(),
        below.into_iter().map(str::to_owned).collect(),
    )
}

/// As a unit with delegation, in both profiles, warm and cold: four services side by side,
/// each in its own group below `system.slice`.
#[tokio::test]
async fn units_with_delegation_hold_every_limit_in_both_profiles_warm_and_cold() {
    let instances = [
        ("strict-warm", "strict", true),
        ("strict-cold", "strict", false),
        ("cloudrun-warm", "cloudrun", true),
        ("cloudrun-cold", "cloudrun", false),
    ]
    .map(|(name, profile, warm)| Instance {
        name,
        shape: Shape::Unit,
        profile,
        warm,
        path: if warm { "warm" } else { "cold" },
    });
    run_guest(&instances, |_| "cgroup_v2").await;
}

/// A group shared with a process that is not the service's, a container with its own cgroup
/// namespace, and one whose cgroupfs is read-only, where the limits still hold by rlimits and
/// the watchdog and the log says why.
#[tokio::test]
async fn shared_groups_containers_and_a_read_only_cgroupfs() {
    let instances = [
        Instance {
            name: "shared",
            shape: Shape::Shared,
            profile: "strict",
            warm: true,
            path: "warm",
        },
        Instance {
            name: "container",
            shape: Shape::Container,
            profile: "cloudrun",
            warm: true,
            path: "warm",
        },
        Instance {
            name: "read-only",
            shape: Shape::ReadOnly,
            profile: "strict",
            warm: true,
            // Without a cgroup, memory is bounded by the address-space rlimit, and the
            // zygote's children start with more address space mapped (numpy and pandas) than
            // 64 MiB: the service runs every script cold and says why.
            path: "cold",
        },
    ];
    let logs = run_guest(&instances, |instance| {
        if instance.shape == Shape::ReadOnly {
            "rlimits"
        } else {
            "cgroup_v2"
        }
    })
    .await;
    let log = &logs[2];
    assert!(
        log.contains("no cgroups that hold their limits") && log.contains("Read-only file system"),
        "the read-only instance did not say why it has no cgroups: {log}"
    );
    assert!(
        log.contains("the warm path did not start") && log.contains("MemoryLimitExceeded"),
        "the read-only instance did not say why it runs cold: {log}"
    );
}

/// Boots a guest with `instances`, checks each against the limits backend `limits` names, and
/// that no group of an execution is left; returns each instance's log.
async fn run_guest(
    instances: &[Instance],
    limits: impl Fn(&Instance) -> &'static str,
) -> Vec<String> {
    let started = Instant::now();
    let mut guest = Guest::boot(instances);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut failures = Vec::new();
    // Every instance with cgroups made its subtree at start-up: the look for leftovers sees
    // them all, or it is not looking in the right place.
    let with_cgroups = instances
        .iter()
        .filter(|instance| limits(instance) == "cgroup_v2")
        .count();
    for (index, instance) in instances.iter().enumerate() {
        failures.extend(check(&mut guest, &client, index, instance, limits(instance)).await);
        let (subtrees, left) = subtrees_and_leftovers(&mut guest).await;
        if !left.is_empty() {
            failures.push(format!(
                "{}: groups left by executions: {left:?}",
                instance.name
            ));
        }
        if subtrees != with_cgroups {
            failures.push(format!(
                "{}: {subtrees} subtrees of instances, {with_cgroups} expected",
                instance.name
            ));
        }
    }
    eprintln!(
        "cgroup-v2 guest with {:?}: {:.1} s",
        instances.iter().map(|i| i.name).collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
    let logs = instances
        .iter()
        .map(|instance| {
            std::fs::read_to_string(guest.path(&format!("{}.log", instance.name))).unwrap()
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}\n{}", guest.logs());
    guest.stop();
    logs
}
