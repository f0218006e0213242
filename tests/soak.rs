//! The real binary under sustained and hostile load, on loopback only, bounded in count and
//! time: 2,000 mixed executions must leave the service's file descriptors, child processes,
//! the sandboxes' processes, temp dirs, mounts and cgroups where they started; SIGTERM in the
//! middle of a load must answer every request and exit 0. Prints its figures (run with
//! `cargo test --test soak -- --nocapture` to see them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

/// The service binary, started with its own config file, killed if the test fails.
struct Service {
    child: Child,
    addr: SocketAddr,
    uids: std::ops::Range<u32>,
    /// Where the service makes per-execution cgroups, as its start-up log says.
    cgroup_parents: Vec<std::path::PathBuf>,
    work_root: tempfile::TempDir,
    _config_dir: tempfile::TempDir,
}

impl Service {
    /// `extra` is appended to the `[sandbox]` table (and may open `[limits]`).
    fn start(extra: &str, env: &[(&str, &str)]) -> Self {
        let work_root = tempfile::tempdir().unwrap();
        let config_dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[server]\nhost = \"127.0.0.1\"\nport = 0\nlog_format = \"json\"\n\
             [sandbox]\nprofile_dir = \"{}/nsjail\"\nwork_root = \"{}\"\n\
             max_concurrency = 2\n{extra}",
            env!("CARGO_MANIFEST_DIR"),
            work_root.path().display(),
        );
        let path = config_dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pyexec"))
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
        // Reads the log for the cgroups and the listening address, then keeps draining it.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
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
            work_root,
            _config_dir: config_dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_field(&self, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|line| line.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Processes whose parent is the service.
    fn children(&self) -> usize {
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

    fn sandbox_processes(&self) -> usize {
        self.uids
            .clone()
            .map(|uid| common::processes_of(uid).len())
            .sum()
    }

    fn cgroups(&self) -> usize {
        common::leftover_cgroups(&self.cgroup_parents).len()
    }

    /// Established TCP connections to the service (IPv4 loopback, as the tests connect).
    fn connections(&self) -> usize {
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

    /// Execution directories left (the instance's own directory holds them).
    fn temp_dirs(&self) -> usize {
        std::fs::read_dir(self.work_root.path())
            .unwrap()
            .flatten()
            .map(|dir| std::fs::read_dir(dir.path()).unwrap().count())
            .sum()
    }

    fn url(&self) -> String {
        format!("http://{}/execute", self.addr)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything that must come back to where it started.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    connections: usize,
    open_fds: usize,
    children: usize,
    sandbox_processes: usize,
    temp_dirs: usize,
    cgroups: usize,
    host_mounts: usize,
}

fn footprint(service: &Service) -> Footprint {
    Footprint {
        connections: service.connections(),
        open_fds: service.open_fds(),
        children: service.children(),
        sandbox_processes: service.sandbox_processes(),
        temp_dirs: service.temp_dirs(),
        cgroups: service.cgroups(),
        host_mounts: std::fs::read_to_string("/proc/1/mountinfo")
            .unwrap()
            .lines()
            .count(),
    }
}

/// Waits (bounded) until `done` holds for the footprint, and returns it.
async fn settled(service: &Service, done: impl Fn(&Footprint) -> bool) -> Footprint {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = footprint(service);
        if done(&now) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The footprint once no client is connected and no sandbox is running.
async fn idle(service: &Service) -> Footprint {
    settled(service, |now| {
        now.connections == 0 && now.sandbox_processes == 0
    })
    .await
}

/// One kind of execution in the mix: its script and the answer it must get.
fn mixed(i: usize) -> (String, u16, &'static str) {
    match i % 20 {
        13 | 14 => (format!("def main():\n    raise ValueError('failure {i}')\n"), 400, "script_exception"),
        15 => ("import time\ndef main():\n    while True:\n        time.sleep(0.01)\n".to_owned(), 400, "time_limit_exceeded"),
        16 | 17 => ("import sys\ndef main():\n    sys.stdout.write('x' * (4 << 20))\n    return 'flooded'\n".to_owned(), 200, "ok"),
        18 => ("def main():\n    hog = b'x' * (512 << 20)\n    return len(hog)\n".to_owned(), 400, "memory_limit_exceeded"),
        19 => ("import numpy as np, pandas as pd\ndef main():\n    return int(pd.Series(np.arange(1000)).sum())\n".to_owned(), 200, "ok"),
        _ => (format!("def main():\n    print('run {i}')\n    return {i}\n"), 200, "ok"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_mixed_executions_leak_nothing() {
    const REQUESTS: usize = 2000;
    let service = Service::start(
        "max_queue = 64\nqueue_timeout_ms = 120000\n[limits]\ntime_limit_ms = 1000\nmemory_bytes = 134217728\n",
        &[],
    );
    // Warm up (the allocator's and the runtime's first growth is not a leak), hang up, then
    // measure: the baseline and the final count both have no client connected.
    let warm_up = reqwest::Client::new();
    for i in 0..10 {
        let response = warm_up
            .post(service.url())
            .json(&json!({ "script": mixed(i).0 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    drop(warm_up);
    let baseline = idle(&service).await;
    assert_eq!(baseline.connections, 0, "{baseline:?}");

    let client = reqwest::Client::new();
    let started = Instant::now();
    let answers: Vec<(u16, String, bool)> = futures::stream::iter(0..REQUESTS)
        .map(|i| {
            let (script, status, code) = mixed(i);
            let request = client
                .post(service.url())
                .json(&json!({ "script": script }));
            async move {
                let (got, body) =
                    common::read(request.send().await.expect("no connection error")).await;
                let got_code = if got == 200 {
                    "ok".to_owned()
                } else {
                    body["code"].as_str().unwrap().to_owned()
                };
                let expected = got == status && got_code == code;
                (got, got_code, expected)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut by_status = BTreeMap::new();
    let mut by_code = BTreeMap::new();
    for (status, code, _) in &answers {
        *by_status.entry(*status).or_insert(0) += 1;
        *by_code.entry(code.clone()).or_insert(0) += 1;
    }
    let unexpected = answers.iter().filter(|(_, _, expected)| !expected).count();
    let peak_rss_kib = service.status_field("VmHWM:");
    drop(client);
    let after = settled(&service, |now| *now == baseline).await;
    eprintln!(
        "soak: {REQUESTS} requests in {:.1} s; by status {by_status:?}; by code {by_code:?}; \
         service peak RSS {} MiB; footprint before {baseline:?}, after {after:?}",
        elapsed.as_secs_f64(),
        peak_rss_kib / 1024,
    );
    assert_eq!(
        unexpected, 0,
        "answers that did not match their kind: {by_code:?}"
    );
    assert_eq!(after, baseline, "something leaked");
    assert!(
        peak_rss_kib < 200 * 1024,
        "the service's memory stays within budget: {peak_rss_kib} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_every_request_and_exits_0() {
    let service = Service::start("max_queue = 8\n", &[("PYEXEC_SHUTDOWN_GRACE_MS", "1500")]);
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..16)
        .map(|i| {
            let seconds = if i % 4 == 0 { 30.0 } else { 0.3 };
            let script =
                format!("import time\ndef main():\n    time.sleep({seconds})\n    return {i}\n");
            let request = client
                .post(service.url())
                .json(&json!({ "script": script }));
            tokio::spawn(async move {
                common::read(request.send().await.expect("every request is answered")).await
            })
        })
        .collect();
    // Both sandboxes running, the rest queued: SIGTERM meets every state.
    let running = || {
        service
            .uids
            .clone()
            .all(|uid| !common::processes_of(uid).is_empty())
    };
    assert!(common::wait_until(running).await, "the sandboxes never ran");
    let signalled = Instant::now();
    let pid = rustix::process::Pid::from_raw(i32::try_from(service.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();

    let mut by_code = BTreeMap::new();
    for request in requests {
        let (status, body) = request.await.unwrap();
        let code = if status == 200 {
            "ok".to_owned()
        } else {
            body["code"].as_str().unwrap().to_owned()
        };
        assert!(
            status == 200 || (status == 503 && ["shutting_down", "busy"].contains(&code.as_str())),
            "{status} {body}"
        );
        *by_code.entry(code).or_insert(0) += 1;
    }
    let (status, service) = tokio::task::spawn_blocking(move || {
        let mut service = service;
        let status = service.child.wait().unwrap();
        (status, service)
    })
    .await
    .unwrap();
    let took = signalled.elapsed();
    eprintln!(
        "shutdown under load: answers {by_code:?}; exited {status} {:.1} s after SIGTERM",
        took.as_secs_f64()
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        by_code.get("shutting_down").copied().unwrap_or(0) >= 1,
        "the 30 s sleeps were stopped: {by_code:?}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    let left = common::processes_left(service.uids.clone()).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(service.temp_dirs(), 0);
    assert_eq!(service.cgroups(), 0);
}
