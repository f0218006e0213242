//! What one instance of the service owns on its host, alone, for as long as it runs: a block
//! of uids (its slots' uids come from it), the cgroup subtree and the work directory named
//! after it. Several instances may share a host (two `make run`, or `make test` while one
//! serves): each takes the first free block, holding an `flock` on
//! `/run/pyexec/uids-<first>.lock` until it exits, so no two live instances ever act on each
//! other's processes, files or cgroups. Whatever an earlier holder of the block left behind (it
//! crashed, it was killed) is swept when the block is taken, before any execution runs.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use super::cleanup;

/// Uids in a block: the most slots an instance may have.
pub const BLOCK_UIDS: u32 = 1000;
/// Blocks tried, from `sandbox.uid_base` up: the most instances on one host.
const BLOCKS: u32 = 64;
/// Where the locks live: root's, and outside any directory a script can write.
const LOCK_DIR: &str = "/run/pyexec";

/// A claimed block; released (its lock dropped) with the instance.
#[derive(Debug)]
pub struct Block {
    first: u32,
    work_dir: PathBuf,
    _lock: File,
}

impl Block {
    /// Takes the first free block at or above `uid_base`, and makes (or empties) its work
    /// directory under `work_root`.
    pub fn claim(uid_base: u32, work_root: &Path) -> Result<Self, String> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(LOCK_DIR)
            .map_err(|error| format!("cannot create {LOCK_DIR}: {error}"))?;
        for index in 0..BLOCKS {
            let first = uid_base + index * BLOCK_UIDS;
            let path = Path::new(LOCK_DIR).join(format!("uids-{first}.lock"));
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
            match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => continue,
                Err(error) => return Err(format!("cannot lock {}: {error}", path.display())),
            }
            let work_dir = work_root.join(format!("pyexec-{first}"));
            private_dir(&work_dir)
                .map_err(|error| format!("cannot make {}: {error}", work_dir.display()))?;
            return Ok(Self {
                first,
                work_dir,
                _lock: lock,
            });
        }
        Err(format!(
            "every block of {BLOCK_UIDS} uids from {uid_base} is held by another instance ({BLOCKS} blocks)"
        ))
    }

    /// All uids of the block.
    pub fn uids(&self) -> Range<u32> {
        self.first..self.first + BLOCK_UIDS
    }

    /// The block's name, for its cgroup subtree and the log.
    pub fn name(&self) -> String {
        format!("uids-{}", self.first)
    }

    /// Where this instance's executions get their directories: root's, mode 0711 (an
    /// execution may pass through to its own directory, never list the others).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Removes what an earlier holder of the block left: processes of its uids, execution
    /// directories, files its uids own in the shared temp directories, System V IPC objects.
    /// Blocks; run it on the blocking pool. Returns what had to be quarantined.
    pub fn sweep_leftovers(&self) -> Vec<PathBuf> {
        let uids = self.uids();
        for uid in cleanup::uids_with_processes(&uids) {
            cleanup::kill_uid(uid);
        }
        let mut quarantined = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.work_dir) {
            for entry in entries.flatten() {
                quarantined.extend(cleanup::remove_or_quarantine(&entry.path()));
            }
        }
        for dir in cleanup::SHARED_TMP {
            quarantined.extend(cleanup::remove_files_of(
                |uid| uids.contains(&uid),
                Path::new(dir),
            ));
        }
        cleanup::remove_ipc_of(&uids);
        quarantined
    }
}

/// Makes `dir` root's with mode 0711, whatever was there: a directory of that name owned by
/// someone else (a script's, made before the service started) is not trusted, but deleted.
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.uid() == 0 => {}
        Ok(_) => {
            cleanup::remove_tree(dir)?;
            std::fs::create_dir(dir)?;
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => std::fs::create_dir(dir)?,
        Err(error) => return Err(error),
    }
    std::os::unix::fs::chown(dir, Some(0), Some(0))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_take_different_blocks_and_free_them_when_gone() {
        let root = tempfile::tempdir().unwrap();
        let base = 2_000_000 + (std::process::id() % 1000) * BLOCKS * BLOCK_UIDS;
        let first = Block::claim(base, root.path()).unwrap();
        let second = Block::claim(base, root.path()).unwrap();
        assert_eq!(first.uids().start, base);
        assert_eq!(second.uids().start, base + BLOCK_UIDS);
        assert_ne!(first.work_dir(), second.work_dir());
        drop(first);
        let third = Block::claim(base, root.path()).unwrap();
        assert_eq!(third.uids().start, base, "a freed block is taken again");
    }

    #[test]
    fn a_work_dir_someone_else_made_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let base = 2_500_000 + (std::process::id() % 1000) * BLOCKS * BLOCK_UIDS;
        let planted = root.path().join(format!("pyexec-{base}"));
        std::fs::create_dir(&planted).unwrap();
        std::fs::write(planted.join("trap"), "x").unwrap();
        std::os::unix::fs::chown(&planted, Some(base + 1), Some(base + 1)).unwrap();
        let block = Block::claim(base, root.path()).unwrap();
        let meta = std::fs::symlink_metadata(block.work_dir()).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o711));
        assert!(!block.work_dir().join("trap").exists());
    }
}
