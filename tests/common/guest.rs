//! A cgroup-v2 guest (`scripts/cgroup-v2-guest.sh`: user-mode Linux with this host's root
//! read-only) running the service built here in the shapes a cgroup-v2 host gives a service,
//! reached through forwarded loopback ports: for `tests/cgroup_v2.rs`, and for `make bench`,
//! which measures the idle penalty there too.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The memory limit the guest's services run with, small because page faults are slow there.
pub const MEMORY_LIMIT: u64 = 64 << 20;
/// The process limit they run with.
pub const PROCESSES: u32 = 12;
/// How long a guest's service may take to start: the guest has one CPU, slower than the host's
/// by far, and the host may be busy.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// How a service is started in the guest: the shapes a cgroup-v2 host gives a service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
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
pub struct Instance {
    pub name: &'static str,
    pub shape: Shape,
    pub profile: &'static str,
    pub warm: bool,
    /// The path `/health` must name.
    pub path: &'static str,
}

/// A booted guest and the host directory it shares.
pub struct Guest {
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
# Runs the command after GROUP in GROUP (created first); returns once it has left this
# script's group (the service may already have moved on into a leaf of GROUP by then).
in_group() {
  mkdir -p "$1"
  sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$@" &
  while grep -qx '0::/init' "/proc/$!/cgroup" 2>/dev/null; do sleep 0.05; done
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
    pub fn boot(instances: &[Instance]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pyexec-guest-")
            // Not under /tmp: the guest mounts a /tmp of its own over the host's.
            .tempdir_in("/var/tmp")
            .unwrap();
        let ports: Vec<u16> = instances.iter().map(|_| super::free_port()).collect();
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
        // A process group of its own: user-mode Linux runs as several host processes, and a
        // failed test must end them all; and killed with the test, should it die unwound.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "bash"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cgroup-v2-guest.sh"))
            .arg(dir.path())
            .args(forwards)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Self { dir, child, ports }
    }

    pub fn url(&self, index: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[index])
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the guest has said so far: its console, its run script's output and every
    /// service's log.
    pub fn logs(&self) -> String {
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
    pub async fn run(&mut self, command: &str) -> String {
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
    pub async fn health(&mut self, client: &reqwest::Client, index: usize) -> Value {
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
    pub fn stop(mut self) {
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
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}
