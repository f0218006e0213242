//! Memory where no cgroup bounds it (Cloud Run's first generation): the address-space rlimit
//! bounds each process, not the execution, so its processes together, the files it writes
//! (Cloud Run's filesystem is memory) and what it parks in socket buffers all escape it. The
//! watchdog measures those while the execution runs and, when their sum passes the memory
//! limit, kills the execution, which then fails with `memory_limit_exceeded`.
//!
//! What it counts, every [`TICK`]: each process's proportional share of the memory it maps
//! (`Pss`, so pages forked children share count once: from `smaps_rollup`, or summed over
//! `smaps` where there is no rollup, as in gVisor; `VmRSS`, which overcounts shared pages,
//! where neither exists), each distinct socket the execution holds at the kernel's default buffer size
//! (the seccomp policy denies growing a buffer), and the files its uid owns in the places it
//! may write. A burst between two ticks can pass the limit for up to a tick; SECURITY.md says so.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use super::cleanup;

/// How often the watchdog measures.
pub const TICK: Duration = Duration::from_millis(100);
/// Entries visited in the execution's writable directories per measurement; beyond them a
/// measurement counts what it has seen.
const MAX_ENTRIES: usize = 50_000;

/// A running watchdog; stopping (or dropping) it ends the watch.
#[derive(Debug)]
pub struct Watchdog {
    uid: u32,
    dirs: Vec<PathBuf>,
    limit_bytes: u64,
    /// Dropped to stop the watch: wakes the watching thread at once, mid-tick included (a
    /// stop that waited out the tick would add up to 100 ms to every answer).
    stop: Option<std::sync::mpsc::Sender<()>>,
    tripped: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches the processes of `uid` and the files it owns in `dirs`, on the blocking pool.
    pub fn start(uid: u32, dirs: Vec<PathBuf>, limit_bytes: u64) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let tripped = Arc::new(AtomicBool::new(false));
        let task = {
            let (tripped, dirs) = (Arc::clone(&tripped), dirs.clone());
            tokio::task::spawn_blocking(move || {
                let socket_bytes = default_socket_buffer();
                loop {
                    let used = measure(uid, &dirs, socket_bytes);
                    if used > limit_bytes {
                        tripped.store(true, Ordering::SeqCst);
                        tracing::info!(
                            uid,
                            used,
                            limit_bytes,
                            "an execution passed its memory limit; stopping it"
                        );
                        cleanup::kill_uid(uid);
                        return;
                    }
                    if stopped.recv_timeout(TICK) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                }
            })
        };
        Self {
            uid,
            dirs,
            limit_bytes,
            stop: Some(stop),
            tripped,
            task: Some(task),
        }
    }

    /// Ends the watch, measuring once more first: what the execution left in files counts
    /// even if it was written between two ticks. Whether it passed its limit.
    pub async fn stop(mut self) -> bool {
        self.stop = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let (uid, dirs, limit) = (self.uid, std::mem::take(&mut self.dirs), self.limit_bytes);
        let over = tokio::task::spawn_blocking(move || {
            measure(uid, &dirs, default_socket_buffer()) > limit
        })
        .await
        .unwrap_or(false);
        over || self.tripped.load(Ordering::SeqCst)
    }
}

/// The execution's memory as the module counts it, in bytes.
pub fn measure(uid: u32, dirs: &[PathBuf], socket_bytes: u64) -> u64 {
    let mut total = 0;
    let mut sockets = HashSet::new();
    for pid in cleanup::pids_of(uid) {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        total += kib_field(&proc_dir.join("smaps_rollup"), "Pss:")
            .or_else(|| kib_sum(&proc_dir.join("smaps"), "Pss:"))
            .or_else(|| kib_field(&proc_dir.join("status"), "VmRSS:"))
            .unwrap_or(0);
        let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target.to_str().and_then(|t| t.strip_prefix("socket:"))
            {
                sockets.insert(inode.to_owned());
            }
        }
    }
    total += socket_bytes * sockets.len() as u64;
    let mut budget = MAX_ENTRIES;
    for dir in dirs {
        total += file_bytes_of(uid, dir, &mut budget);
    }
    total
}

/// A `Name:  123 kB` field of a /proc file, in bytes.
fn kib_field(path: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The sum of every `Name:  123 kB` line of a /proc file, in bytes; `None` if it has none.
fn kib_sum(path: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .peekable();
    lines.peek()?;
    let kib: u64 = lines
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(kib * 1024)
}

/// Bytes of storage used by the entries `uid` owns under `dir` (the whole of `dir` if it is
/// the uid's), visiting at most `budget` entries; never follows a link.
fn file_bytes_of(uid: u32, dir: &Path, budget: &mut usize) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            if *budget == 0 {
                return total;
            }
            *budget -= 1;
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.uid() != uid {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// What one socket can hold without `SO_SNDBUF`, which the seccomp policy denies.
fn default_socket_buffer() -> u64 {
    std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(212_992)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::chown;

    use super::*;

    #[test]
    fn pss_is_the_same_from_smaps_as_from_its_rollup() {
        let me = Path::new("/proc/self");
        let rollup = kib_field(&me.join("smaps_rollup"), "Pss:").unwrap();
        let summed = kib_sum(&me.join("smaps"), "Pss:").unwrap();
        // Two reads of a live process: the same to within a few pages of this test's own.
        assert!(rollup.abs_diff(summed) < 4 << 20, "{rollup} vs {summed}");
        assert_eq!(kib_sum(&me.join("status"), "Pss:"), None);
    }

    #[test]
    fn files_count_only_when_the_uid_owns_them() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("big"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("theirs"), vec![1u8; 1 << 20]).unwrap();
        for path in [&mine, &mine.join("big")] {
            chown(path, Some(990_960), None).unwrap();
        }
        let used = measure(990_960, &[dir.path().to_owned()], 0);
        assert!((1 << 20..2 << 20).contains(&used), "{used}");
    }
}
