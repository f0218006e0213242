//! Runs one jail process to completion with bounded everything: a millisecond deadline,
//! capped concurrent reads of every pipe, and the whole process group killed and reaped on
//! every path (including when the caller's future is dropped). Knows nothing about Python.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 64 * 1024;
/// How long to keep reading pipes after the process is gone: a descendant that escaped the
/// process group could hold them open for ever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// The descriptors a jail process gets besides stdin/stdout/stderr.
#[derive(Debug, Clone, Copy)]
pub struct ExtraFds {
    /// Passed into the jail: the harness's result channel.
    pub result: i32,
    /// Kept by nsjail for its own log, so it never mixes with the script's stderr.
    pub log: i32,
}

/// Byte caps for each pipe.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub stdout: usize,
    pub stderr: usize,
    pub result: usize,
    pub log: usize,
}

/// The first bytes read from a pipe, whether more were discarded, and when bytes first and
/// last arrived (for the phases of an execution).
#[derive(Debug, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
}

/// One of a jail process's pipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
    Result,
    Log,
}

/// Sees each pipe's bytes as they are read, for output passed on while the process runs. It
/// must not wait: the pipes are read on its call.
pub trait Tap: Sync + std::fmt::Debug {
    /// `captured` holds all that was kept of `pipe` so far; its last `kept` bytes are new
    /// (none where the read passed the cap).
    fn read(&self, pipe: Pipe, captured: &Captured, kept: usize);
}

/// How the process ended, as the service observed it.
#[derive(Debug, Clone, Copy)]
pub enum Ended {
    Exited(ExitStatus),
    /// The deadline fired and the service killed it.
    TimedOut,
    /// The service stopped it (shutting down).
    Cancelled,
}

/// What happened to the process and what it wrote.
#[derive(Debug)]
pub struct Finished {
    pub ended: Ended,
    pub stdout: Captured,
    pub stderr: Captured,
    pub result: Captured,
    pub log: Captured,
    /// When the process was spawned, and how long until it ended with every pipe read.
    pub spawned_at: Instant,
    pub elapsed: Duration,
}

/// A jailed process being supervised: something that can be waited for and killed. The cold
/// path's is a spawned nsjail; the warm path's a child of the zygote (`zygote.rs`).
pub trait Jailed: Send {
    /// Completes when the process has ended, with its wait status.
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>> + Send;
    /// Kills it and whatever it left in its process group, on every path (it may have
    /// ended already).
    fn kill(&mut self);
}

/// The read ends of a jailed process's pipes.
#[derive(Debug)]
pub struct Pipes {
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub result: pipe::Receiver,
    /// nsjail's own log, where nsjail supervises.
    pub log: Option<pipe::Receiver>,
}

/// A pipe's two ends, the read end ready for tokio.
pub fn pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    let (reader, writer) = io::pipe()?;
    Ok((
        pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?,
        OwnedFd::from(writer),
    ))
}

/// Spawns `cmd` (stdin from /dev/null, every output piped, `inherit` as the descriptors it
/// names) and supervises it (the tests' way: the service spawns and supervises apart). `cmd` must make itself a session leader (start under `setsid`),
/// so its process group is its own and its id is the child's pid.
#[cfg(test)]
pub async fn run(
    cmd: Command,
    fds: ExtraFds,
    inherit: Vec<(OwnedFd, i32)>,
    limits: (Duration, Caps),
    cancel: &CancellationToken,
) -> io::Result<Finished> {
    let (mut spawned, pipes, started) = spawn(cmd, fds, inherit)?;
    let watch = Watch {
        deadline: limits.0,
        caps: limits.1,
        cancel,
        tap: None,
    };
    supervise(&mut spawned, pipes, started, watch).await
}

/// Spawns `cmd` with its pipes and extra descriptors, without supervising it yet: the process,
/// its pipes and when it was spawned ([`supervise`] watches it).
pub fn spawn(
    mut cmd: Command,
    fds: ExtraFds,
    inherit: Vec<(OwnedFd, i32)>,
) -> io::Result<(Spawned, Pipes, Instant)> {
    let (result, result_writer) = pipe()?;
    let (log, log_writer) = pipe()?;
    let mut mappings = vec![
        FdMapping {
            parent_fd: result_writer,
            child_fd: fds.result,
        },
        FdMapping {
            parent_fd: log_writer,
            child_fd: fds.log,
        },
    ];
    mappings.extend(inherit.into_iter().map(|(parent_fd, child_fd)| FdMapping {
        parent_fd,
        child_fd,
    }));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .fd_mappings(mappings)
        .map_err(io::Error::other)?;

    let started = Instant::now();
    let spawned = cmd.spawn();
    // The command owns our copies of the write ends: drop it so EOF arrives when the child exits.
    drop(cmd);
    let mut child = spawned?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("stdout and stderr must be piped"));
    };
    let pipes = Pipes {
        stdout: pipe::Receiver::from_owned_fd(stdout.into_owned_fd()?)?,
        stderr: pipe::Receiver::from_owned_fd(stderr.into_owned_fd()?)?,
        result,
        log: Some(log),
    };
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    Ok((Spawned { child, group }, pipes, started))
}

/// How a jail process is watched: its deadline (counted from when it was asked for), its
/// pipes' caps, what stops it early, and what sees its output as it is read.
#[derive(Debug, Clone, Copy)]
pub struct Watch<'a> {
    pub deadline: Duration,
    pub caps: Caps,
    pub cancel: &'a CancellationToken,
    pub tap: Option<&'a dyn Tap>,
}

/// Reads every pipe of `jailed` concurrently within `watch`'s caps while waiting for it, and
/// kills it at the deadline or when `cancel` fires; on every path it is killed and waited for
/// before this returns.
pub async fn supervise(
    jailed: &mut impl Jailed,
    pipes: Pipes,
    started: Instant,
    watch: Watch<'_>,
) -> io::Result<Finished> {
    let Watch {
        deadline,
        caps,
        cancel,
        tap,
    } = watch;
    let mut captured: [Captured; 4] = Default::default();
    let [out, err, res, lg] = &mut captured;
    let (ended, read) = {
        let log = async {
            match pipes.log {
                Some(log) => read_capped(log, (Pipe::Log, caps.log), lg, None).await,
                None => Ok(()),
            }
        };
        let readers = async {
            tokio::try_join!(
                read_capped(pipes.stdout, (Pipe::Stdout, caps.stdout), out, tap),
                read_capped(pipes.stderr, (Pipe::Stderr, caps.stderr), err, tap),
                read_capped(pipes.result, (Pipe::Result, caps.result), res, tap),
                log,
            )
        };
        let mut readers = std::pin::pin!(readers);
        let mut read = None;
        // Read while waiting, so a full pipe never blocks the child.
        let waited = tokio::time::timeout(deadline.saturating_sub(started.elapsed()), async {
            loop {
                tokio::select! {
                    done = &mut readers, if read.is_none() => read = Some(done),
                    status = jailed.wait() => return status.map(Ended::Exited),
                    () = cancel.cancelled() => return Ok(Ended::Cancelled),
                }
            }
        })
        .await;
        let ended = waited.unwrap_or(Ok(Ended::TimedOut))?;
        // Whatever it left behind in its group dies now; then it is waited for itself.
        jailed.kill();
        if !matches!(ended, Ended::Exited(_)) {
            jailed.wait().await?;
        }
        let read = match read {
            Some(done) => done,
            // Keep what was read so far if a descendant that left the group holds a pipe.
            None => tokio::time::timeout(DRAIN_GRACE, readers)
                .await
                .unwrap_or(Ok(((), (), (), ()))),
        };
        (ended, read)
    };
    read?;
    let [stdout, stderr, result, log] = captured;
    Ok(Finished {
        ended,
        stdout,
        stderr,
        result,
        log,
        spawned_at: started,
        elapsed: started.elapsed(),
    })
}

/// The cold path's jailed process: nsjail, spawned by the service.
#[derive(Debug)]
pub struct Spawned {
    child: tokio::process::Child,
    group: Option<Pid>,
}

impl Jailed for Spawned {
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>> + Send {
        self.child.wait()
    }

    fn kill(&mut self) {
        if let Some(pid) = self.group {
            // ESRCH (the group is already empty) is the normal case.
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.start_kill();
    }
}

/// A cancelled request drops its future mid-way: nothing it started may outlive it.
impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads up to `cap` bytes of `pipe` into `into`, then drains and discards the rest so the
/// writer never blocks; `tap` sees each read. Writes into the caller's buffer so a cancelled
/// read keeps what it had.
async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    (pipe, cap): (Pipe, usize),
    into: &mut Captured,
    tap: Option<&dyn Tap>,
) -> io::Result<()> {
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        into.first_at.get_or_insert(now);
        into.last_at = Some(now);
        let room = cap.saturating_sub(into.bytes.len());
        let kept = n.min(room);
        into.bytes.extend_from_slice(&chunk[..kept]);
        into.truncated |= n > room;
        if let Some(tap) = tap {
            tap.read(pipe, into, kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDS: ExtraFds = ExtraFds { result: 3, log: 4 };
    const CAPS: Caps = Caps {
        stdout: 8,
        stderr: 8,
        result: 1024,
        log: 1024,
    };

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new(crate::sandbox::command::SETSID);
        cmd.args(["/bin/sh", "-c", script]);
        cmd
    }

    async fn run_sh(script: &str, deadline: Duration) -> Finished {
        run(
            sh(script),
            FDS,
            Vec::new(),
            (deadline, CAPS),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    fn code(finished: &Finished) -> Option<i32> {
        match finished.ended {
            Ended::Exited(status) => status.code(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn every_pipe_is_read_and_capped() {
        let finished = run_sh(
            "printf 0123456789; printf err >&2; printf result >&3; printf log >&4; exit 7",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(code(&finished), Some(7));
        assert_eq!(finished.stdout.bytes, b"01234567");
        assert!(finished.stdout.truncated);
        assert_eq!(
            (finished.stderr.bytes.as_slice(), finished.stderr.truncated),
            (&b"err"[..], false)
        );
        assert_eq!(finished.result.bytes, b"result");
        assert_eq!(finished.log.bytes, b"log");
    }

    #[tokio::test]
    async fn the_deadline_kills_the_process_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let finished = run_sh(
            &format!("(sleep 1; touch {}) & sleep 30", marker.display()),
            Duration::from_millis(200),
        )
        .await;
        assert!(
            matches!(finished.ended, Ended::TimedOut),
            "{:?}",
            finished.ended
        );
        assert!(
            finished.elapsed < Duration::from_secs(5),
            "{:?}",
            finished.elapsed
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a child outlived the deadline");
    }

    #[tokio::test]
    async fn cancelling_kills_the_process_at_once() {
        let cancel = CancellationToken::new();
        let stopper = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                cancel.cancel();
            })
        };
        let finished = run(
            sh("echo started; sleep 30"),
            FDS,
            Vec::new(),
            (Duration::from_secs(20), CAPS),
            &cancel,
        )
        .await
        .unwrap();
        stopper.await.unwrap();
        assert!(
            matches!(finished.ended, Ended::Cancelled),
            "{:?}",
            finished.ended
        );
        assert_eq!(finished.stdout.bytes, b"started\n");
        assert!(
            finished.elapsed < Duration::from_secs(5),
            "{:?}",
            finished.elapsed
        );
    }

    #[tokio::test]
    async fn a_background_child_holding_stdout_does_not_delay_the_answer() {
        let finished = run_sh("sleep 30 & echo done", Duration::from_secs(20)).await;
        assert_eq!(code(&finished), Some(0));
        assert_eq!(finished.stdout.bytes, b"done\n");
        assert!(
            finished.elapsed < Duration::from_secs(5),
            "{:?}",
            finished.elapsed
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let cancel = CancellationToken::new();
        let error = run(
            Command::new("/nonexistent/nsjail"),
            FDS,
            Vec::new(),
            (Duration::from_secs(1), CAPS),
            &cancel,
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
