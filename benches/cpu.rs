//! Where the CPU of a measured row goes: the service's own (its `/proc/<pid>/stat`), the jail's
//! (nsjail, the zygote and every child: a cpuacct cgroup holding the service and all it starts,
//! minus the service itself), the bench's client, and the rest of the machine's busy time from
//! `/proc/stat`: the kernel's work that no process is charged for (tearing down each network
//! namespace, RCU callbacks) and whatever else the shared machine ran.

#![allow(
    clippy::cast_precision_loss,
    reason = "tick and nanosecond counts of a few seconds, far below 2^52"
)]

use std::path::{Path, PathBuf};

/// The cgroup v1 cpuacct hierarchy; where it is not mounted, the jail's share is reported
/// together with the kernel's.
const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";

/// A cpuacct group holding one service and everything it starts; emptied and removed on drop.
#[derive(Debug)]
pub struct Group(PathBuf);

impl Group {
    /// Moves `pid` and all its descendants (the warm path's nsjail and zygote are already
    /// running) into a new group. `None` where cpuacct is not there to use.
    pub fn around(pid: u32) -> Option<Self> {
        let path = Path::new(CPUACCT).join(format!("pyexec-bench-{pid}"));
        std::fs::create_dir(&path).ok()?;
        let group = Self(path);
        for member in std::iter::once(pid).chain(descendants(pid)) {
            // A process that ended meanwhile is fine to miss.
            let _ = std::fs::write(group.0.join("cgroup.procs"), member.to_string());
        }
        Some(group)
    }

    fn usage_ns(&self) -> Option<u64> {
        std::fs::read_to_string(self.0.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(CPUACCT).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Every process whose parent chain leads to `root`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let parent: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((child, parent))
        })
        .collect();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, of)| *of == parent)
                .map(|(child, _)| *child),
        );
        index += 1;
    }
    found.remove(0);
    found
}

/// Clock ticks a process was charged (user + system), from `/proc/<pid>/stat`.
fn ticks_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|field| field.parse().ok())
                .collect();
            Some(fields.iter().sum())
        })
        .unwrap_or(0)
}

/// The machine's busy clock ticks, all CPUs (everything but idle and iowait).
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    fields.iter().sum::<u64>() - fields.get(3).unwrap_or(&0) - fields.get(4).unwrap_or(&0)
}

/// Linux's `USER_HZ`, the unit of `/proc`'s tick counts (100 on every architecture we run on).
const TICK_MS: f64 = 10.0;

#[derive(Debug, Clone, Copy)]
struct Reading {
    busy: u64,
    client: u64,
    service: u64,
    group_ns: Option<u64>,
}

/// A row's CPU from its start.
#[derive(Debug)]
pub struct Meter<'a> {
    service: String,
    group: Option<&'a Group>,
    start: Reading,
}

/// CPU milliseconds per execution, by where they went.
#[derive(Debug, Clone, Copy)]
pub struct Breakdown {
    pub total: f64,
    pub service: f64,
    /// `None` without cpuacct: then it is inside `rest`.
    pub jail: Option<f64>,
    pub client: f64,
    pub rest: f64,
}

impl<'a> Meter<'a> {
    pub fn start(service_pid: u32, group: Option<&'a Group>) -> Self {
        let service = service_pid.to_string();
        let start = read(&service, group);
        Self {
            service,
            group,
            start,
        }
    }

    /// The CPU since `start`, per one of `executions`.
    pub fn finish(self, executions: usize) -> Breakdown {
        let end = read(&self.service, self.group);
        let per = |ticks: u64| ticks as f64 * TICK_MS / executions.max(1) as f64;
        let total = per(end.busy - self.start.busy);
        let service = per(end.service - self.start.service);
        let client = per(end.client - self.start.client);
        let jail = end.group_ns.zip(self.start.group_ns).map(|(end, start)| {
            let group_ms = (end - start) as f64 / 1e6 / executions.max(1) as f64;
            (group_ms - service).max(0.0)
        });
        Breakdown {
            total,
            service,
            jail,
            client,
            rest: (total - service - client - jail.unwrap_or(0.0)).max(0.0),
        }
    }
}

fn read(service: &str, group: Option<&Group>) -> Reading {
    Reading {
        busy: busy_ticks(),
        client: ticks_of("self"),
        service: ticks_of(service),
        group_ns: group.and_then(Group::usage_ns),
    }
}
