//! The service binary as a process of its own, for the tests that need the real thing: its
//! own config file, its log read for what it reports at start-up, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::processes_of;

/// The service binary, started with its own config file, killed if the test fails.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
    /// The slots' uids, as its start-up log says.
    pub uids: std::ops::Range<u32>,
    /// Where the service makes per-execution cgroups, as its start-up log says.
    pub cgroup_parents: Vec<std::path::PathBuf>,
    pub work_root: std::path::PathBuf,
    /// Every JSON line the service logged so far.
    pub events: Arc<Mutex<Vec<Value>>>,
    /// Removed with the service, when the service made it.
    own_work_root: Option<tempfile::TempDir>,
    _config_dir: tempfile::TempDir,
}

impl Service {
    /// `extra` is appended to the `[sandbox]` table (and may open `[limits]`).
    pub fn start(extra: &str, env: &[(&str, &str)]) -> Self {
        let work_root = tempfile::tempdir().unwrap();
        let mut service = Self::start_in(work_root.path(), extra, env, &[]);
        service.own_work_root = Some(work_root);
        service
    }

    /// As [`Service::start`], with executions in `work_root`, the binary run under `wrapper`
    /// (e.g. `prlimit --nofile=1024:1024 --`).
    pub fn start_in(
        work_root: &std::path::Path,
        extra: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Self {
        let config_dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[server]\nhost = \"127.0.0.1\"\nport = 0\nlog_format = \"json\"\n\
             [sandbox]\nprofile_dir = \"{}/nsjail\"\nwork_root = \"{}\"\n{}{extra}",
            env!("CARGO_MANIFEST_DIR"),
            work_root.display(),
            if extra.contains("max_concurrency") {
                ""
            } else {
                "max_concurrency = 2\n"
            },
        );
        let path = config_dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let binary = env!("CARGO_BIN_EXE_pyexec");
        let (program, args) = match wrapper.split_first() {
            Some((program, args)) => (*program, [args, &[binary]].concat()),
            None => (binary, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PYEXEC_CONFIG", &path)
            .env("RUST_LOG", "warn,pyexec=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        // Reads the log for the cgroups and the listening address, and keeps every line.
        let kept = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                kept.lock().unwrap().push(event.clone());
                let fields: &[&str] = match event["message"].as_str() {
                    Some("sandbox ready") => &["uids", "cgroups"],
                    Some("listening") => &["addr"],
                    _ => continue,
                };
                for field in fields {
                    let _ = tx.send(event[field].as_str().unwrap().to_owned());
                }
            }
        });
        let next = || {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the service started")
        };
        // The range's and the list's Debug forms: `first..end`, and (paths under
        // /sys/fs/cgroup being plain) a JSON array.
        let uids = next();
        let (first, end) = uids.split_once("..").unwrap();
        let uids = first.parse().unwrap()..end.parse().unwrap();
        let cgroup_parents = serde_json::from_str(&next()).unwrap();
        let addr = next().parse().unwrap();
        Self {
            child,
            addr,
            uids,
            cgroup_parents,
            work_root: work_root.to_owned(),
            events,
            own_work_root: None,
            _config_dir: config_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn status_field(&self, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|line| line.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Processes whose parent is the service.
    pub fn children(&self) -> usize {
        let me = self.pid().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
            .filter(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    == Some(&me)
            })
            .count()
    }

    pub fn sandbox_processes(&self) -> usize {
        self.uids.clone().map(|uid| processes_of(uid).len()).sum()
    }

    pub fn cgroups(&self) -> usize {
        super::leftover_cgroups(&self.cgroup_parents).len()
    }

    /// Established TCP connections to the service (IPv4 loopback, as the tests connect).
    pub fn connections(&self) -> usize {
        let local = format!("0100007F:{:04X}", self.addr.port());
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"01")
            })
            .count()
    }

    /// Execution directories left in the instance's own directory (not the instance's files).
    pub fn temp_dirs(&self) -> usize {
        std::fs::read_dir(self.work_root.join(format!("pyexec-{}", self.uids.start)))
            .unwrap()
            .flatten()
            .filter(|entry| {
                !super::INSTANCE_FILES.contains(&entry.file_name().to_string_lossy().as_ref())
            })
            .count()
    }

    pub fn url(&self) -> String {
        format!("http://{}/execute", self.addr)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
