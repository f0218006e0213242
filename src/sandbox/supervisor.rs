//! The warm path's supervisor: which zygote executions fork from now, and its successors.
//! What a fork cannot renew (the hash secret, the address layout, `AT_RANDOM`) every child of
//! one zygote shares, so a zygote serves a bounded number of executions for a bounded time
//! (`sandbox.zygote_max_executions`, `sandbox.zygote_max_age_secs`): near either bound a fresh
//! one is started in the background and takes over once ready; past it, executions run cold
//! until then. A zygote that died is started again at once, then with backoff while it fails;
//! an execution that could not fork for another reason (a full descriptor table) restarts
//! nothing.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::command::ZygoteJail;
use super::zygote::Zygote;
use crate::config::{Profile, SandboxConfig};

/// The pause after the first failed start of a zygote, doubled after each further one ...
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// ... up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How many executions one zygote may serve, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub executions: u64,
    pub age: Duration,
}

impl Share {
    /// Whether a zygote that forked `forks` children and was born `age` ago is near its end
    /// (nine tenths of either bound): time to warm its successor.
    pub(super) fn nearly_used(self, forks: u64, age: Duration) -> bool {
        forks.saturating_mul(10) >= self.executions.saturating_mul(9) || age * 10 >= self.age * 9
    }
}

/// The warm path of one instance: how to start its zygote, the one in use, and its successors.
#[derive(Debug)]
pub struct ZygoteSupervisor {
    config: SandboxConfig,
    profile: Profile,
    dir: PathBuf,
    uid: u32,
    slot_uids: Range<u32>,
    /// The init message (`zygote.py`'s docstring), serialized.
    init: Vec<u8>,
    share: Share,
    zygote: Mutex<Option<Arc<Zygote>>>,
    /// A successor is being started.
    renewing: AtomicBool,
    /// Starts that failed in a row, and when the next may be tried.
    failures: AtomicU32,
    retry_at: Mutex<Option<Instant>>,
}

impl ZygoteSupervisor {
    /// The warm path for a jail of `profile` with the service's Python in `dir`, run as
    /// `ids.0`, its children as `ids.1`; `init` is what each zygote is told at start.
    pub fn new(
        config: SandboxConfig,
        profile: Profile,
        dir: PathBuf,
        ids: (u32, Range<u32>),
        init: Vec<u8>,
        share: Share,
    ) -> Self {
        Self {
            config,
            profile,
            dir,
            uid: ids.0,
            slot_uids: ids.1,
            init,
            share,
            zygote: Mutex::new(None),
            renewing: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            retry_at: Mutex::new(None),
        }
    }

    /// The profile its zygote's children run in.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The zygote to fork from now, if one runs and has not served its share; asks for a
    /// successor when it is near its end, or gone.
    pub fn zygote(self: &Arc<Self>) -> Option<Arc<Zygote>> {
        let current = self
            .zygote
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(zygote) = current.filter(|zygote| zygote.is_alive()) else {
            self.renew();
            return None;
        };
        let (forks, age) = (zygote.forks.load(Ordering::SeqCst), zygote.born.elapsed());
        if self.share.nearly_used(forks, age) {
            self.renew();
        }
        (forks < self.share.executions && age < self.share.age).then_some(zygote)
    }

    /// How many executions a zygote may serve.
    pub fn share(&self) -> Share {
        self.share
    }

    /// Starts a zygote and makes it the one in use.
    pub async fn start(self: &Arc<Self>) -> Result<(), String> {
        let jail = ZygoteJail {
            config: &self.config,
            profile: self.profile,
            harness_dir: &self.dir,
            uid: self.uid,
            slot_uids: self.slot_uids.clone(),
        };
        let zygote = Arc::new(Zygote::start(&jail, &self.init).await?);
        *self.zygote.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&zygote));
        // Idle or not, it is replaced in time: the next one is warm before this one ages out.
        // Weak: the timer must keep neither the warm path nor a replaced zygote alive.
        let (warm, zygote, age) = (
            Arc::downgrade(self),
            Arc::downgrade(&zygote),
            self.share.age,
        );
        tokio::spawn(async move {
            tokio::time::sleep(age.mul_f64(0.9)).await;
            if let Some(warm) = Weak::upgrade(&warm) {
                let current = warm
                    .zygote
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if current
                    .is_some_and(|current| std::ptr::eq(Arc::as_ptr(&current), zygote.as_ptr()))
                {
                    warm.renew();
                }
            }
        });
        Ok(())
    }

    /// Starts a successor in the background, one at a time, and makes it the one in use once
    /// it is ready; the one it replaces lives on until its last child ends. After failed
    /// starts, waits (1 s, doubling up to 60 s) before the next.
    pub fn renew(self: &Arc<Self>) {
        if self
            .retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        if self.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let warm = Arc::clone(self);
        tokio::spawn(async move {
            let started = Instant::now();
            match warm.start().await {
                Ok(()) => {
                    warm.failures.store(0, Ordering::SeqCst);
                    *warm.retry_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    tracing::info!(
                        took_ms = crate::protocol::millis(started.elapsed()),
                        "a fresh zygote took over"
                    );
                }
                Err(reason) => {
                    let failures = warm.failures.fetch_add(1, Ordering::SeqCst);
                    let pause = BACKOFF_FIRST
                        .saturating_mul(1 << failures.min(6))
                        .min(BACKOFF_MAX);
                    *warm.retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(Instant::now() + pause);
                    tracing::error!(
                        reason,
                        retry_in_ms = crate::protocol::millis(pause),
                        "a zygote did not start; scripts run cold meanwhile"
                    );
                }
            }
            warm.renewing.store(false, Ordering::SeqCst);
        });
    }
}
