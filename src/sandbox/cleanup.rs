//! Removing what an execution left on the host: its processes (by uid), its directory trees
//! (its own directory, and in `cloudrun` what its uid left in the shared temp directories),
//! and, at start-up, System V IPC objects of the instance's uids. Whatever a script built is
//! hostile: deletion never recurses (a 25,000-deep tree must not overflow a stack), keeps at
//! most three descriptors open whatever the depth (a deep tree must not exhaust them), never
//! follows a link, and checks on the way up that it is still where it went down. A tree that
//! cannot be deleted is never left readable: it is quarantined (root's, mode 000) and retried.
//!
//! Everything here blocks (it waits for dying processes and walks directories): callers run it
//! on the blocking pool.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Mode, OFlags, fchmod, fchown, fstat, openat, statat,
};
use rustix::io::Errno;

/// World-writable directories a script without a mount namespace can leave files in: those of
/// a Debian image (`/var/lock` is a link to `/run/lock`).
pub const SHARED_TMP: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];
/// Rounds of `kill -KILL -1` before giving up on a process that keeps forking.
const KILL_ROUNDS: usize = 50;

/// Deletes `path` and everything under it. See the module's rules.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let top = match openat(CWD, path, dir_flags(), Mode::empty()) {
        Ok(top) => top,
        Err(Errno::NOENT) => return Ok(()),
        // Not a directory, or a symlink: the entry itself goes, never what it points to.
        Err(Errno::NOTDIR | Errno::LOOP) => return remove_entry(CWD, path),
        Err(error) => return Err(error.into()),
    };
    let mut levels: Vec<Level> = Vec::new();
    let mut current = top;
    let mut pending = empty_files_of(&current)?;
    loop {
        if let Some(name) = pending.pop() {
            match openat(&current, name.as_c_str(), dir_flags(), Mode::empty()) {
                Ok(child) => {
                    let id = identity(&current)?;
                    levels.push(Level {
                        name,
                        parent: id,
                        pending: std::mem::take(&mut pending),
                    });
                    current = child;
                    pending = empty_files_of(&current)?;
                }
                Err(Errno::NOENT) => {}
                Err(Errno::NOTDIR | Errno::LOOP) => remove_entry(&current, name.as_c_str())?,
                Err(error) => return Err(error.into()),
            }
            continue;
        }
        // `current` is empty: go up and remove it.
        let Some(level) = levels.pop() else { break };
        let parent = openat(&current, c"..", dir_flags(), Mode::empty())?;
        if identity(&parent)? != level.parent {
            return Err(io::Error::other(
                "a directory moved while its tree was being deleted",
            ));
        }
        current = parent;
        rustix::fs::unlinkat(&current, level.name.as_c_str(), AtFlags::REMOVEDIR)?;
        pending = level.pending;
    }
    drop(current);
    std::fs::remove_dir(path).or_else(|error| match error.kind() {
        io::ErrorKind::NotFound => Ok(()),
        _ => Err(error),
    })
}

/// A directory on the way down: its name, the identity of its parent (checked on the way
/// up) and the parent's subdirectories still to delete.
struct Level {
    name: CString,
    parent: (u64, u64),
    pending: Vec<CString>,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// (device, inode): what a directory is, whatever its name.
fn identity(fd: impl AsFd) -> io::Result<(u64, u64)> {
    let stat = fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Unlinks every entry of `dir` that is not a directory; returns the names of those that are.
fn empty_files_of(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut subdirs = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory),
            _ => false,
        };
        if is_dir {
            subdirs.push(name.to_owned());
        } else {
            remove_entry(dir, name)?;
        }
    }
    Ok(subdirs)
}

fn remove_entry<P: rustix::path::Arg>(dir: impl AsFd, name: P) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Makes the directory at `path` root's with mode 000, so no execution can enter it again
/// (every path into the tree goes through it). For a tree that could not be deleted.
pub fn quarantine(path: &Path) -> io::Result<()> {
    let dir = openat(CWD, path, dir_flags(), Mode::empty())?;
    fchown(
        &dir,
        Some(rustix::fs::Uid::ROOT),
        Some(rustix::fs::Gid::ROOT),
    )?;
    fchmod(&dir, Mode::empty())?;
    Ok(())
}

/// Deletes the tree at `path`; if that fails, quarantines it and returns it for a later retry.
/// Never silent: a failure is logged with what was done about it.
pub fn remove_or_quarantine(path: &Path) -> Option<PathBuf> {
    let Err(error) = remove_tree(path) else {
        return None;
    };
    match quarantine(path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), %error, "could not delete what an execution left; quarantined (root only) and will retry");
            Some(path.to_owned())
        }
        Err(quarantine_error) => {
            tracing::error!(path = %path.display(), %error, %quarantine_error, "could not delete nor quarantine what an execution left");
            Some(path.to_owned())
        }
    }
}

/// Deletes the entries of `dir` whose owner is `owned` (trees included, never following a
/// link); what cannot be deleted is quarantined and returned.
pub fn remove_files_of(owned: impl Fn(u32) -> bool, dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .path()
                .symlink_metadata()
                .is_ok_and(|meta| owned(meta.uid()))
        })
        .filter_map(|entry| remove_or_quarantine(&entry.path()))
        .collect()
}

/// Kills every process running as `uid`. Each round a shell dropped to `uid` runs
/// `kill -KILL -1`, which reaches every process of that uid at once (ones forked since the
/// last look included), until /proc shows none left.
pub fn kill_uid(uid: u32) {
    for round in 0..KILL_ROUNDS {
        if !live_uids().contains(&uid) {
            return;
        }
        if round > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::process::Command::new("/bin/sh")
            .args(["-c", "kill -KILL -1 2>/dev/null"])
            .uid(uid)
            .gid(uid)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    tracing::warn!(
        uid,
        "processes of a finished execution survived repeated kills"
    );
}

/// The uids of `range` that have a live process, from one look at /proc.
pub fn uids_with_processes(range: &std::ops::Range<u32>) -> Vec<u32> {
    let mut uids: Vec<u32> = live_uids()
        .into_iter()
        .filter(|uid| range.contains(uid))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// The pids of the live processes running as `uid`.
pub fn pids_of(uid: u32) -> Vec<u32> {
    live_processes()
        .filter(|(_, owner)| *owner == uid)
        .map(|(pid, _)| pid)
        .collect()
}

fn live_uids() -> Vec<u32> {
    live_processes().map(|(_, uid)| uid).collect()
}

/// (pid, real uid) of every process that is not a zombie.
fn live_processes() -> impl Iterator<Item = (u32, u32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
            };
            if field("State:").is_some_and(|state| state.starts_with('Z')) {
                return None;
            }
            let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
            Some((pid, uid))
        })
}

/// Removes the System V shared memory segments, message queues and semaphore sets owned or
/// created by one of `uids`. The seccomp policy lets no script make one; this is for what an
/// older or broken sandbox may have left, so the next execution cannot read it.
pub fn remove_ipc_of(uids: &std::ops::Range<u32>) {
    // (table, ipcrm flag, column of the id, columns of uid and cuid)
    let tables = [
        ("/proc/sysvipc/shm", "-m", 1, [7, 9]),
        ("/proc/sysvipc/msg", "-q", 1, [7, 9]),
        ("/proc/sysvipc/sem", "-s", 1, [4, 6]),
    ];
    for (table, flag, id_column, owner_columns) in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let owned = owner_columns.iter().any(|&column| {
                columns
                    .get(column)
                    .and_then(|value| value.parse::<u32>().ok())
                    .is_some_and(|uid| uids.contains(&uid))
            });
            let Some(id) = columns.get(id_column).filter(|_| owned) else {
                continue;
            };
            let removed = std::process::Command::new("ipcrm")
                .args([flag, id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !removed.is_ok_and(|status| status.success()) {
                tracing::warn!(
                    table,
                    id,
                    "could not remove an IPC object an execution left"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    #[test]
    fn a_tree_far_deeper_than_any_stack_is_deleted_with_few_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("deep");
        // Built with relative steps: the full path would pass PATH_MAX.
        std::fs::create_dir(&top).unwrap();
        let mut fd = openat(CWD, &top, dir_flags(), Mode::empty()).unwrap();
        for _ in 0..30_000 {
            rustix::fs::mkdirat(&fd, c"d", Mode::from_raw_mode(0o755)).unwrap();
            fd = openat(&fd, c"d", dir_flags(), Mode::empty()).unwrap();
        }
        rustix::fs::openat(
            &fd,
            c"marker",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(fd);
        let before = open_descriptors();
        // On a thread with a small stack: nothing here may recurse.
        let deleted = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_tree(&top).map(|()| top.exists()))
            .unwrap()
            .join()
            .unwrap();
        assert!(!deleted.unwrap(), "the tree is gone");
        assert!(open_descriptors() <= before + 1);
    }

    fn open_descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn links_are_removed_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        symlink(&outside, tree.join("a/link-to-dir")).unwrap();
        symlink(outside.join("keep"), tree.join("a/b/link-to-file")).unwrap();
        let fifo = tree.join("a/fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // A directory its owner made unreadable: root deletes it anyway.
        std::fs::set_permissions(tree.join("a/b"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(
            outside.join("keep").exists(),
            "the link's target is untouched"
        );
        // A link given as the tree itself is removed, not followed.
        let link = dir.path().join("link");
        symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(!link.exists() && outside.join("keep").exists());
    }

    #[test]
    fn a_tree_that_cannot_be_deleted_is_quarantined_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let mount = tree.join("busy");
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::write(tree.join("secret"), "x").unwrap();
        std::os::unix::fs::chown(&tree, Some(990_990), Some(990_990)).unwrap();
        // A mount point cannot be removed: the deletion fails half way.
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "pyexec-test", mount.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs needs root");
        let left = remove_or_quarantine(&tree);
        let meta = std::fs::symlink_metadata(&tree);
        let _ = std::process::Command::new("umount").arg(&mount).status();
        assert_eq!(left.as_deref(), Some(tree.as_path()));
        let meta = meta.unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, 0, 0));
        assert!(
            remove_or_quarantine(&tree).is_none(),
            "the retry deletes it"
        );
    }

    #[test]
    fn only_the_uids_files_are_removed() {
        use std::os::unix::fs::chown;
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("inner"), "x").unwrap();
        std::fs::write(&theirs, "x").unwrap();
        chown(&mine, Some(990_950), None).unwrap();
        assert!(remove_files_of(|uid| uid == 990_950, dir.path()).is_empty());
        assert!(!mine.exists());
        assert!(theirs.exists());
    }
}
