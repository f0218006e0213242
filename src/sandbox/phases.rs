//! Where one execution's time goes, phase by phase: what `make bench` breaks an execution
//! into, and what an operator reads (at debug, target `pyexec::phases`) to see it. Logged once
//! the execution's teardown is done, after its answer was sent.

use std::time::{Duration, Instant};

/// The phases of one execution, in the order they happen.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Waiting for a slot (the queue).
    pub queue: Duration,
    /// Making the execution's directory and files.
    pub workdir: Duration,
    /// Making its cgroup.
    pub cgroup: Duration,
    /// From asking for a jail to the harness's `started` frame: the jail and the interpreter.
    pub jail_start: Duration,
    /// From `started` to the final frame: the script and the encoding of its result.
    pub user_code: Duration,
    /// From the final frame to the process's end with every pipe read.
    pub collect: Duration,
    /// The sweep after the answer: processes, directory, cgroup.
    pub teardown: Duration,
}

impl Phases {
    /// The jail's three phases from when it was asked for (`spawned`), when the harness said
    /// `started` and reported (`first` and `last` bytes on its channel), and when all was read.
    pub fn set_run(
        &mut self,
        spawned: Instant,
        first: Option<Instant>,
        last: Option<Instant>,
        done: Instant,
    ) {
        let first = first.unwrap_or(done);
        let last = last.unwrap_or(done).max(first);
        self.jail_start = first.saturating_duration_since(spawned);
        self.user_code = last.saturating_duration_since(first);
        self.collect = done.saturating_duration_since(last);
    }

    /// One debug line, in microseconds; `path` says which runner ran the execution.
    pub fn log(&self, path: super::RunPath) {
        let us = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        tracing::debug!(
            target: "pyexec::phases",
            path = path.as_str(),
            queue_us = us(self.queue),
            workdir_us = us(self.workdir),
            cgroup_us = us(self.cgroup),
            jail_start_us = us(self.jail_start),
            user_code_us = us(self.user_code),
            collect_us = us(self.collect),
            teardown_us = us(self.teardown),
            "execution phases"
        );
    }
}
