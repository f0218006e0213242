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

use std::time::{Duration, Instant};

use common::guest::{Guest, Instance, MEMORY_LIMIT, PROCESSES, Shape};
use serde_json::{Value, json};

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
