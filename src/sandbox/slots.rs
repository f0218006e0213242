//! Execution slots: at most N executions at once, each running as a host uid (from the
//! instance's block) no other running execution has, and a bounded queue in front of them. A
//! request is admitted (given a [`Ticket`]) once its body is in, so the requests held in memory
//! never exceed N plus the queue; beyond the queue it is refused at once, and a ticket that
//! waited too long for a slot is refused too. When the service stops admitting (SIGTERM),
//! tickets already queued keep their place and run if a slot frees up before they are
//! cancelled.
//!
//! When an execution ends its slot is swept before anyone may reuse it: every process of its
//! uid is killed, its directory is deleted, and (without a mount namespace) every file its uid
//! left in the shared temp directories is deleted; what cannot be deleted is quarantined and
//! retried at the next sweep. This holds on every path, a cancelled request included, because
//! the sweep runs from the slot's `Drop`, on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::cgroup::Cgroup;
use super::cleanup;
use super::launch::RunPath;
use super::phases::Phases;

/// The pool of slots.
#[derive(Debug)]
pub struct Slots {
    uids: std::ops::Range<u32>,
    permits: Arc<Semaphore>,
    free: Mutex<Vec<u32>>,
    /// Tickets alive: requests running or waiting for a slot.
    admitted: AtomicUsize,
    /// The most tickets at once: the slots plus the queue.
    capacity: usize,
    queue_timeout: Duration,
    /// No new tickets (the service is stopping); queued ones still run.
    closed: AtomicBool,
    /// Fired when the service gives up on everything still running or queued.
    cancel: CancellationToken,
    /// Trees that could not be deleted, quarantined; every sweep tries them again.
    quarantined: Mutex<Vec<PathBuf>>,
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
    /// The slot itself, held until the sweep is done.
    permit: Option<OwnedSemaphorePermit>,
    /// The request's place in admission, given back as soon as its answer is ready.
    ticket: Option<Ticket>,
    held: Held,
    /// Logged, with the teardown's own time, once the sweep is done.
    phases: Option<(Phases, RunPath)>,
}

/// What an execution holds besides its uid; the slot's sweep removes it, off the async workers.
#[derive(Debug, Default)]
struct Held {
    workdir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
}

impl Slots {
    /// A slot for each of `uids`, and room for `max_queue` waiting requests, each for at most
    /// `queue_timeout`; `cancel` stops the waiting ones too.
    pub fn new(
        uids: std::ops::Range<u32>,
        max_queue: usize,
        queue_timeout: Duration,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let count = uids.len();
        Arc::new(Self {
            uids: uids.clone(),
            permits: Arc::new(Semaphore::new(count)),
            free: Mutex::new(uids.rev().collect()),
            admitted: AtomicUsize::new(0),
            capacity: count + max_queue,
            queue_timeout,
            closed: AtomicBool::new(false),
            cancel,
            quarantined: Mutex::new(Vec::new()),
        })
    }

    /// A ticket if fewer than the slots plus the queue are admitted; never waits.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Refused> {
        if self.closed.load(Ordering::SeqCst) {
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

    /// Refuses new requests from now on; those already queued keep their place.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// The uids of the slots.
    pub fn uids(&self) -> std::ops::Range<u32> {
        self.uids.clone()
    }

    /// Slots in use (running or being swept) and tickets waiting for one.
    pub fn load(&self) -> (usize, usize) {
        let in_use = self.uids.len() - self.permits.available_permits().min(self.uids.len());
        let admitted = self.admitted.load(Ordering::SeqCst).min(self.capacity);
        (in_use, admitted.saturating_sub(in_use))
    }

    /// Completes once no slot is in use: every execution ran and was swept.
    pub async fn idle(&self) {
        let all = u32::try_from(self.uids.len()).unwrap_or(u32::MAX);
        let _ = self.permits.acquire_many(all).await;
    }

    /// Keeps what could not be deleted for the next sweep.
    pub fn quarantine(&self, paths: impl IntoIterator<Item = PathBuf>) {
        self.quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(paths);
    }

    /// Tries the quarantined trees again.
    fn retry_quarantined(&self) {
        let paths = std::mem::take(
            &mut *self
                .quarantined
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let left: Vec<PathBuf> = paths
            .iter()
            .filter_map(|path| cleanup::remove_or_quarantine(path))
            .collect();
        self.quarantine(left);
    }
}

impl Ticket {
    /// A free slot now, or once one frees up within the queue timeout.
    pub async fn acquire(self) -> Result<Slot, Refused> {
        let pool = Arc::clone(&self.pool);
        let permit = if let Ok(permit) = Arc::clone(&pool.permits).try_acquire_owned() {
            permit
        } else {
            let wait = tokio::time::timeout(
                pool.queue_timeout,
                Arc::clone(&pool.permits).acquire_owned(),
            );
            tokio::select! {
                waited = wait => match waited {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(Refused::Closed),
                    Err(_elapsed) => return Err(Refused::QueueTimeout),
                },
                () = pool.cancel.cancelled() => return Err(Refused::Closed),
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
            permit: Some(permit),
            ticket: Some(self),
            held: Held::default(),
            phases: None,
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
    pub fn hold(&mut self, workdir: Option<PathBuf>, cgroup: Option<Cgroup>) {
        self.held = Held { workdir, cgroup };
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.held.cgroup.as_ref()
    }

    /// Sweeps and frees the slot, returning once nothing of the execution is left (the next
    /// execution, on any slot, starts from a clean host).
    pub async fn release(mut self) {
        if let Some(sweep) = self.sweeper() {
            let _ = tokio::task::spawn_blocking(sweep).await;
        }
    }

    /// Sweeps and frees the slot now, and logs the execution's `phases` with the sweep's own
    /// time: where a later execution could see what this one left on the host (no mount
    /// namespace), before the answer.
    pub async fn release_now(mut self, phases: Phases, path: RunPath) {
        self.phases = Some((phases, path));
        self.release().await;
    }

    /// Sweeps and frees the slot in the background, and logs the execution's `phases` with
    /// the sweep's own time. The request's admission place is free at once; the slot (and so
    /// the concurrency it counts against) only once the sweep is done, so a request that
    /// arrives meanwhile waits for it rather than being refused.
    pub fn release_later(mut self, phases: Phases, path: RunPath) {
        self.ticket = None;
        self.phases = Some((phases, path));
    }

    /// The sweep, once: it owns what must outlive the slot until the sweep is done.
    fn sweeper(&mut self) -> Option<impl FnOnce() + Send + 'static> {
        let permit = self.permit.take()?;
        let ticket = self.ticket.take();
        let uid = self.uid;
        let pool = Arc::clone(&self.pool);
        let Held { workdir, cgroup } = std::mem::take(&mut self.held);
        let sweep_files = self.sweep_files;
        let phases = self.phases.take();
        Some(move || {
            let started = std::time::Instant::now();
            // Every process of the execution joined its cgroup before it ran as the uid (both
            // launchers), so a group that could be removed leaves none alive and the uid needs
            // no look through all of /proc; without one, or if it would not go, the uid is
            // killed and looked for everywhere.
            if !cgroup.is_some_and(Cgroup::close) {
                cleanup::kill_uid(uid);
            }
            // Nothing of the uid runs any more, so nothing moves in its trees while they go.
            pool.retry_quarantined();
            pool.quarantine(workdir.and_then(|dir| cleanup::remove_or_quarantine(&dir)));
            if sweep_files {
                for dir in cleanup::SHARED_TMP {
                    pool.quarantine(cleanup::remove_files_of(
                        |owner| owner == uid,
                        Path::new(dir),
                    ));
                }
            }
            pool.free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(uid);
            drop(permit);
            drop(ticket);
            if let Some((mut phases, path)) = phases {
                phases.teardown = started.elapsed();
                phases.log(path);
            }
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
            Err(_) => sweep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(first: u32, count: u32, queue: usize, timeout: Duration) -> Arc<Slots> {
        Slots::new(
            first..first + count,
            queue,
            timeout,
            CancellationToken::new(),
        )
    }

    async fn slot(slots: &Arc<Slots>) -> Result<Slot, Refused> {
        slots.admit()?.acquire().await
    }

    #[tokio::test]
    async fn beyond_the_queue_requests_are_refused_at_once_and_waiters_time_out() {
        let slots = pool(990_910, 1, 1, Duration::from_millis(100));
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
    async fn a_queued_ticket_keeps_its_place_when_admission_closes_until_cancelled() {
        let cancel = CancellationToken::new();
        let slots = Slots::new(990_930..990_931, 2, Duration::from_secs(10), cancel.clone());
        let running = slot(&slots).await.unwrap();
        let queued = tokio::spawn(slots.admit().unwrap().acquire());
        let cancelled = tokio::spawn(slots.admit().unwrap().acquire());
        slots.close();
        assert_eq!(slots.admit().unwrap_err(), Refused::Closed);
        running.release().await;
        let next = queued.await.unwrap().unwrap();
        assert_eq!(next.uid, 990_930, "the queued request ran after closing");
        cancel.cancel();
        assert_eq!(cancelled.await.unwrap().unwrap_err(), Refused::Closed);
    }

    #[tokio::test]
    async fn a_running_execution_keeps_its_place_until_it_is_swept() {
        let slots = pool(990_920, 1, 0, Duration::from_secs(5));
        let running = slot(&slots).await.unwrap();
        assert_eq!(slots.admit().unwrap_err(), Refused::QueueFull);
        running.release().await;
        assert!(slots.admit().is_ok());
    }

    #[tokio::test]
    async fn a_slot_is_not_reused_before_it_is_swept() {
        let slots = pool(990_900, 2, 0, Duration::from_secs(5));
        let first = slot(&slots).await.unwrap();
        let second = slot(&slots).await.unwrap();
        assert_ne!(first.uid, second.uid);
        let uid = first.uid;
        first.release().await;
        let third = slot(&slots).await.unwrap();
        assert_eq!(third.uid, uid, "the swept uid comes back");
    }

    #[tokio::test]
    async fn the_sweep_deletes_the_execution_s_directory() {
        let root = tempfile::tempdir().unwrap();
        let workdir = root.path().join("run");
        std::fs::create_dir_all(workdir.join("deep/er")).unwrap();
        let slots = pool(990_940, 1, 0, Duration::from_secs(5));
        let mut running = slot(&slots).await.unwrap();
        running.hold(Some(workdir.clone()), None);
        running.release().await;
        assert!(!workdir.exists());
    }
}
