//! Execution slots: at most N executions at once, each running as a host uid no other running
//! execution has, and a bounded queue in front of them. A request is admitted (given a
//! [`Ticket`]) before its body is read, so a request beyond the queue is refused at once and
//! the requests in memory never exceed N plus the queue; a ticket that waited too long for a
//! slot is refused too. When an execution ends its slot is swept before anyone may reuse it: every
//! process of its uid is killed and every file its uid left in the shared temp directories is
//! deleted. This holds on every path, a cancelled request included, because the sweep runs
//! from the slot's `Drop`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::cgroup::{Cgroup, CgroupUsage};

/// World-writable directories a script without a mount namespace can leave files in: those of
/// a Debian image (`/var/lock` is a link to `/run/lock`).
const SHARED_TMP: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];
/// Rounds of `kill -KILL -1` before giving up on a process that keeps forking.
const KILL_ROUNDS: usize = 50;

/// The pool of slots.
#[derive(Debug)]
pub struct Slots {
    permits: Arc<Semaphore>,
    free: Mutex<Vec<u32>>,
    /// Tickets alive: requests running, waiting for a slot, or still sending their body.
    admitted: AtomicUsize,
    /// The most tickets at once: the slots plus the queue.
    capacity: usize,
    queue_timeout: Duration,
}

/// An admitted request's place, given back on drop (a cancelled request included). Running
/// executions keep theirs until their slot is swept.
#[derive(Debug)]
pub struct Ticket {
    pool: Arc<Slots>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is busy and the queue is full.
    QueueFull,
    /// Waited the whole queue timeout.
    QueueTimeout,
    /// The service is shutting down.
    Closed,
}

/// One execution's slot: its uid (also its gid). Dropping it sweeps and frees it.
#[derive(Debug)]
pub struct Slot {
    pub uid: u32,
    /// Delete the uid's files in the host's shared temp directories when the slot is freed:
    /// needed where scripts can write there (no mount namespace).
    pub sweep_files: bool,
    pool: Arc<Slots>,
    permit: Option<(OwnedSemaphorePermit, Ticket)>,
    held: Held,
}

/// What an execution holds besides its uid; the slot's sweep removes it, off the async workers.
#[derive(Debug, Default)]
struct Held {
    workdir: Option<tempfile::TempDir>,
    cgroup: Option<Cgroup>,
}

impl Slots {
    /// `count` slots with uids `uid_base..uid_base + count`, and room for `max_queue` waiting
    /// requests, each for at most `queue_timeout`.
    pub fn new(
        uid_base: u32,
        count: usize,
        max_queue: usize,
        queue_timeout: Duration,
    ) -> Arc<Self> {
        let uids = (0..count)
            .filter_map(|slot| u32::try_from(slot).ok())
            .map(|slot| uid_base + slot);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(count)),
            free: Mutex::new(uids.rev().collect()),
            admitted: AtomicUsize::new(0),
            capacity: count + max_queue,
            queue_timeout,
        })
    }

    /// A ticket if fewer than the slots plus the queue are admitted; never waits.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Refused> {
        if self.permits.is_closed() {
            return Err(Refused::Closed);
        }
        // Counted before the check, so two racing requests cannot both take the last place.
        let position = self.admitted.fetch_add(1, Ordering::SeqCst) + 1;
        let ticket = Ticket {
            pool: Arc::clone(self),
        };
        if position > self.capacity {
            return Err(Refused::QueueFull);
        }
        Ok(ticket)
    }

    /// Refuses every request from now on, those already waiting included.
    pub fn close(&self) {
        self.permits.close();
    }
}

impl Ticket {
    /// A free slot now, or once one frees up within the queue timeout.
    pub async fn acquire(self) -> Result<Slot, Refused> {
        let pool = Arc::clone(&self.pool);
        let permit = match Arc::clone(&pool.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(Refused::Closed),
            Err(TryAcquireError::NoPermits) => {
                match tokio::time::timeout(
                    pool.queue_timeout,
                    Arc::clone(&pool.permits).acquire_owned(),
                )
                .await
                {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(Refused::Closed),
                    Err(_elapsed) => return Err(Refused::QueueTimeout),
                }
            }
        };
        let uid = pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .ok_or(Refused::Closed)?;
        Ok(Slot {
            uid,
            sweep_files: false,
            pool,
            permit: Some((permit, self)),
            held: Held::default(),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pool.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slot {
    /// Ties the execution's directory and cgroup to the slot, so the same sweep removes them.
    pub fn hold(&mut self, workdir: tempfile::TempDir, cgroup: Option<Cgroup>) {
        self.held = Held {
            workdir: Some(workdir),
            cgroup,
        };
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.held.cgroup.as_ref()
    }

    /// Sweeps and frees the slot, returning once nothing of the execution is left (the next
    /// execution, on any slot, starts from a clean host), with what its cgroup measured.
    pub async fn release(mut self) -> CgroupUsage {
        match self.sweeper() {
            Some(sweep) => tokio::task::spawn_blocking(sweep).await.unwrap_or_default(),
            None => CgroupUsage::default(),
        }
    }

    /// The sweep, once: it owns what must outlive the slot until the sweep is done.
    fn sweeper(&mut self) -> Option<impl FnOnce() -> CgroupUsage + Send + 'static> {
        let (permit, ticket) = self.permit.take()?;
        let uid = self.uid;
        let pool = Arc::clone(&self.pool);
        let Held { workdir, cgroup } = std::mem::take(&mut self.held);
        let sweep_files = self.sweep_files;
        Some(move || {
            let usage = cgroup.as_ref().map(Cgroup::usage).unwrap_or_default();
            drop(cgroup);
            kill_uid(uid);
            drop(workdir);
            if sweep_files {
                for dir in SHARED_TMP {
                    remove_files_of(uid, Path::new(dir));
                }
            }
            pool.free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(uid);
            drop(permit);
            drop(ticket);
            usage
        })
    }
}

/// A slot dropped without [`Slot::release`] (a cancelled request) is swept in the background.
impl Drop for Slot {
    fn drop(&mut self) {
        let Some(sweep) = self.sweeper() else { return };
        // Off the async workers: the sweep waits for dying processes and walks directories.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(sweep)),
            Err(_) => drop(sweep()),
        }
    }
}

/// Kills every process running as `uid`. Each round a shell dropped to `uid` runs
/// `kill -KILL -1`, which reaches every process of that uid at once (ones forked since the
/// last look included), until /proc shows none left.
fn kill_uid(uid: u32) {
    for round in 0..KILL_ROUNDS {
        if !has_live_process(uid) {
            return;
        }
        if round > 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
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

/// Whether a process (not a zombie) runs as `uid`.
fn has_live_process(uid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let uid = uid.to_string();
    entries.flatten().any(|entry| {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            return false;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let zombie = field("State:").is_some_and(|state| state.starts_with('Z'));
        let real_uid = field("Uid:").and_then(|ids| ids.split_whitespace().next());
        !zombie && real_uid == Some(uid.as_str())
    })
}

/// Deletes the entries of `dir` owned by `uid` (recursively, never following symlinks).
fn remove_files_of(uid: u32, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.uid() != uid {
            continue;
        }
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        if let Err(error) = removed {
            tracing::warn!(uid, path = %entry.path().display(), %error, "could not delete a file an execution left");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn slot(slots: &Arc<Slots>) -> Result<Slot, Refused> {
        slots.admit()?.acquire().await
    }

    #[tokio::test]
    async fn beyond_the_queue_requests_are_refused_at_once_and_waiters_time_out() {
        let slots = Slots::new(990_910, 1, 1, Duration::from_millis(100));
        let held = slot(&slots).await.unwrap();
        let waiting = slots.admit().unwrap();
        assert_eq!(slots.admit().unwrap_err(), Refused::QueueFull);
        assert_eq!(waiting.acquire().await.unwrap_err(), Refused::QueueTimeout);
        let admitted = slots.admit().unwrap();
        drop(admitted);
        slots.close();
        drop(held);
        assert_eq!(slot(&slots).await.unwrap_err(), Refused::Closed);
    }

    #[tokio::test]
    async fn a_running_execution_keeps_its_place_until_it_is_swept() {
        let slots = Slots::new(990_920, 1, 0, Duration::from_secs(5));
        let running = slot(&slots).await.unwrap();
        assert_eq!(slots.admit().unwrap_err(), Refused::QueueFull);
        running.release().await;
        assert!(slots.admit().is_ok());
    }

    #[tokio::test]
    async fn a_slot_is_not_reused_before_it_is_swept() {
        let slots = Slots::new(990_900, 2, 0, Duration::from_secs(5));
        let first = slot(&slots).await.unwrap();
        let second = slot(&slots).await.unwrap();
        assert_ne!(first.uid, second.uid);
        let uid = first.uid;
        first.release().await;
        let third = slot(&slots).await.unwrap();
        assert_eq!(third.uid, uid, "the swept uid comes back");
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
        remove_files_of(990_950, dir.path());
        assert!(!mine.exists());
        assert!(theirs.exists());
    }
}
