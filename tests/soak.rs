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
use std::time::{Duration, Instant};

use common::service::Service;
use futures::StreamExt;
use serde_json::json;

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

impl Footprint {
    /// Whether anything is held beyond `baseline`: more of anything is a leak, and so is a
    /// different mount count either way; fewer descriptors than a baseline reading is not.
    fn exceeds(&self, baseline: &Self) -> bool {
        self.connections > baseline.connections
            || self.open_fds > baseline.open_fds
            || self.children != baseline.children
            || self.sandbox_processes > baseline.sandbox_processes
            || self.temp_dirs > baseline.temp_dirs
            || self.cgroups > baseline.cgroups
            || self.host_mounts != baseline.host_mounts
    }
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

/// The footprint once no client is connected, no sandbox is running and three readings 100 ms
/// apart agree (a descriptor the last answer used may still be closing when the first is taken).
async fn idle(service: &Service) -> Footprint {
    let mut last = None;
    let mut agreeing = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = footprint(service);
        let quiet = now.connections == 0 && now.sandbox_processes == 0;
        agreeing = if quiet && last.as_ref() == Some(&now) {
            agreeing + 1
        } else {
            0
        };
        if agreeing >= 2 || Instant::now() > deadline {
            return now;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let after = settled(&service, |now| !now.exceeds(&baseline)).await;
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
    assert!(
        !after.exceeds(&baseline),
        "something leaked: before {baseline:?}, after {after:?}"
    );
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
