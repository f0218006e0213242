//! The host-wide counters a fresh `/proc` still shows: a pid namespace hides other processes,
//! but `/proc/stat` counts every fork on the host, `/proc/loadavg` and `/proc/pressure/*` every
//! runnable task, `/proc/meminfo` every page, so one execution could watch another's activity
//! (one counted a concurrent one's 800 forks). In a namespaced jail (cold and warm alike) each
//! is covered by a read-only bind of a file the service writes once at start-up: a constant
//! `stat` with this host's CPUs (glibc counts them there where `/sys` is absent, so
//! `os.cpu_count()` stays right), a constant `loadavg`, a `meminfo` that states the memory
//! limit, and empty files or an empty directory for the rest, which numpy, pandas and the
//! standard library never read. Without a mount namespace (`cloudrun`) nothing can be covered:
//! SECURITY.md says so.

use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What covers one `/proc` entry.
#[derive(Debug, Clone, Copy)]
enum Cover {
    /// A file with this text.
    Text(fn(&Host) -> String),
    /// An empty file.
    Empty,
    /// An empty directory.
    EmptyDir,
}

/// The entries covered, by their name under `/proc`.
const COVERED: [(&str, Cover); 13] = [
    ("stat", Cover::Text(stat)),
    (
        "loadavg",
        Cover::Text(|_| "0.00 0.00 0.00 1/1 1\n".to_owned()),
    ),
    ("meminfo", Cover::Text(meminfo)),
    ("uptime", Cover::Text(|_| "1.00 0.00\n".to_owned())),
    ("vmstat", Cover::Empty),
    ("diskstats", Cover::Empty),
    ("interrupts", Cover::Empty),
    ("softirqs", Cover::Empty),
    ("schedstat", Cover::Empty),
    ("zoneinfo", Cover::Empty),
    ("buddyinfo", Cover::Empty),
    ("locks", Cover::Empty),
    ("pressure", Cover::EmptyDir),
];

/// What the constant files say about this host.
struct Host {
    cpus: usize,
    memory_bytes: u64,
}

/// One covered entry: the file (or directory) that covers it, and `/proc/<name>`.
#[derive(Debug, Clone)]
pub struct Mask {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// Writes the covers into `dir` (root's, readable by all) for the entries this host's `/proc`
/// has, and returns them. `memory_bytes` is what `meminfo` states.
pub fn install(dir: &Path, memory_bytes: u64) -> io::Result<Vec<Mask>> {
    let host = Host {
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        memory_bytes,
    };
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(dir)?;
    let mut masks = Vec::new();
    for (name, cover) in COVERED {
        let target = Path::new("/proc").join(name);
        if target.symlink_metadata().is_err() {
            continue;
        }
        let source = dir.join(name);
        match cover {
            Cover::Text(text) => write(&source, &text(&host))?,
            Cover::Empty => write(&source, "")?,
            Cover::EmptyDir => {
                std::fs::DirBuilder::new()
                    .mode(0o555)
                    .recursive(true)
                    .create(&source)?;
            }
        }
        masks.push(Mask { source, target });
    }
    Ok(masks)
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

/// `/proc/stat` as on an idle host with these CPUs.
fn stat(host: &Host) -> String {
    let idle = "0 0 0 0 0 0 0 0 0 0";
    let mut text = format!("cpu  {idle}\n");
    for cpu in 0..host.cpus {
        let _ = writeln!(text, "cpu{cpu} {idle}");
    }
    text.push_str(
        "intr 0\nctxt 0\nbtime 0\nprocesses 1\nprocs_running 1\nprocs_blocked 0\nsoftirq 0\n",
    );
    text
}

/// `/proc/meminfo` stating the memory limit as the machine's memory.
fn meminfo(host: &Host) -> String {
    let kib = host.memory_bytes / 1024;
    format!(
        "MemTotal:       {kib} kB\nMemFree:        {kib} kB\nMemAvailable:   {kib} kB\n\
         Buffers:               0 kB\nCached:                0 kB\nSwapTotal:             0 kB\n\
         SwapFree:              0 kB\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cover_is_written_for_what_this_host_has() {
        let dir = tempfile::tempdir().unwrap();
        let masks = install(dir.path(), 512 << 20).unwrap();
        assert!(
            masks
                .iter()
                .any(|mask| mask.target == Path::new("/proc/stat"))
        );
        for mask in &masks {
            assert!(mask.source.starts_with(dir.path()), "{mask:?}");
            assert!(mask.source.symlink_metadata().is_ok(), "{mask:?}");
        }
        let stat = std::fs::read_to_string(dir.path().join("stat")).unwrap();
        let cpus = stat
            .lines()
            .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
            .count();
        assert_eq!(cpus, std::thread::available_parallelism().unwrap().get());
        let meminfo = std::fs::read_to_string(dir.path().join("meminfo")).unwrap();
        assert!(
            meminfo.starts_with("MemTotal:       524288 kB\n"),
            "{meminfo}"
        );
    }
}
