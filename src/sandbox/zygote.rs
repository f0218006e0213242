//! The warm path's host side. One zygote per instance at a time: a Python process (in `strict`
//! inside a jail of its own, `command::zygote`) that imported the harness, numpy and pandas
//! once and has never run user code. For each execution the service asks it, over a
//! `SOCK_SEQPACKET` control socket, for one child, handing it the execution's pipes, two memfds
//! only the child reads (how to jail itself, and the job, which it reads after `started`), a
//! `go` pipe and a status socket of the child's own (as `CPython`'s forkserver gives each child
//! its own pipe: no request ids, no shared table of waiters). On that socket the zygote answers
//! with the child's pid (as `SCM_CREDENTIALS`, which the kernel translates into the service's
//! pid namespace, when the zygote has a pid namespace of its own; without namespaces, in the
//! message), the service puts that pid in the execution's cgroup and lets the child go, and
//! the zygote reports its wait status when it ends. The child jails itself before any user code
//! runs (see `src/harness/zygote.py`); the service supervises it like a cold jail
//! (`process::supervise`) and classifies it with the same code.
//! Which zygote is used, and when it is replaced, is `supervisor.rs`'s.
//!
//! Why a zygote and not a pool of pre-started jails: a pool only hides latency (each jail still
//! pays nsjail, the interpreter and the imports in CPU, and B0 alone is about 15 ms of CPU),
//! while forking a pre-imported process costs about 3 ms, so it also raises throughput, which a
//! 2-core machine needs; and a child of the zygote gets fresh namespaces, uid, `/tmp` and
//! filters just as a cold jail does. See BENCHMARKS.md and the closing note of issue 9.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use serde::de::DeserializeOwned;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::command::{self, ZygoteJail};
use super::documents::{Empty, ForkRequest, Ready, Status};
use super::process::Jailed;
use super::supervisor::Share;

/// How long the zygote may take to import what it preloads.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fork may take before the zygote is deemed stuck.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest control message.
const MESSAGE_BYTES: usize = 64 * 1024;

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    control: Arc<AsyncFd<OwnedFd>>,
    alive: Arc<AtomicBool>,
    namespaced: bool,
    /// Children asked for, so far.
    pub(super) forks: AtomicU64,
    pub(super) born: Instant,
    /// Its process (or its jail), killed when the last holder lets go: the warm path, or an
    /// execution still running in one of its children.
    _process: tokio::process::Child,
}

/// The zygote could not serve a request: the execution should go the cold way.
#[derive(Debug, thiserror::Error)]
#[error("the warm sandbox is unavailable: {0}")]
pub struct Unavailable(pub String);

impl Zygote {
    /// Starts the zygote in `jail` and waits until it has imported everything `init` asks for.
    pub async fn start(jail: &ZygoteJail<'_>, init: &[u8]) -> Result<Self, String> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|error| format!("socketpair: {error}"))?;
        let mut cmd = command::zygote(jail);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .fd_mappings(vec![FdMapping {
                parent_fd: theirs,
                child_fd: command::FDS.result,
            }])
            .map_err(|error| error.to_string())?;
        let spawned = cmd.spawn();
        drop(cmd);
        let mut child =
            spawned.map_err(|error| format!("cannot start the zygote's jail: {error}"))?;
        for output in [
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(forward_log(output));
        }
        let control = Arc::new(register(ours).map_err(|error| error.to_string())?);
        send(&control, init, &[])
            .await
            .map_err(|error| format!("cannot reach the zygote: {error}"))?;
        let ready = tokio::time::timeout(START_TIMEOUT, receive::<Ready>(&control))
            .await
            .map_err(|_| "the zygote did not get ready in time".to_owned())?
            .map_err(|error| format!("the zygote's control socket: {error}"))?;
        let Some((Ready { ready: pid }, _)) = ready else {
            return Err("the zygote failed to start (see its lines in the log)".to_owned());
        };
        tracing::debug!(pid, "a zygote is ready");
        let alive = Arc::new(AtomicBool::new(true));
        let (watched, flag) = (Arc::clone(&control), Arc::clone(&alive));
        tokio::spawn(async move {
            // The zygote sends nothing more on this socket: it ends when the zygote does.
            while let Ok(Some(_)) = receive::<serde_json::Value>(&watched).await {}
            flag.store(false, Ordering::SeqCst);
            tracing::info!("a zygote ended");
        });
        Ok(Self {
            control,
            alive,
            namespaced: jail.profile.namespaced(),
            forks: AtomicU64::new(0),
            born: Instant::now(),
            _process: child,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Asks for one child that jails itself as `jail` says and runs `job`, with `outputs`
    /// (stdout, stderr, result: write ends) as its stdio and result channel; the child waits
    /// for [`Forked::go`]. `share` caps how many children this zygote gives.
    pub async fn fork(
        self: &Arc<Self>,
        share: Share,
        jail: &[u8],
        job: &[u8],
        outputs: [OwnedFd; 3],
    ) -> Result<Forked, Unavailable> {
        let unavailable = |what: &str| Unavailable(what.to_owned());
        let failed = |error: io::Error| Unavailable(error.to_string());
        if !self.is_alive() {
            return Err(unavailable("the zygote is not running"));
        }
        if self.forks.fetch_add(1, Ordering::SeqCst) >= share.executions {
            return Err(unavailable("the zygote has served its share of executions"));
        }
        let jail = memfd("pyexec-jail", jail).map_err(failed)?;
        let job = memfd("pyexec-job", job).map_err(failed)?;
        let (go_read, go_write) = io::pipe().map_err(failed)?;
        let (status, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|error| failed(error.into()))?;
        if self.namespaced {
            rustix::net::sockopt::set_socket_passcred(&status, true)
                .map_err(|error| failed(error.into()))?;
        }
        let go_read = OwnedFd::from(go_read);
        let fds = [
            jail.as_fd(),
            job.as_fd(),
            outputs[0].as_fd(),
            outputs[1].as_fd(),
            outputs[2].as_fd(),
            go_read.as_fd(),
            theirs.as_fd(),
        ];
        let request = serde_json::to_vec(&ForkRequest { fork: Empty {} })
            .map_err(|error| Unavailable(error.to_string()))?;
        let sent = send(&self.control, &request, &fds).await;
        // Ours are no longer needed: the child's copies are what it writes to and reads.
        drop((jail, job, outputs, go_read, theirs));
        if let Err(error) = sent {
            self.alive.store(false, Ordering::SeqCst);
            return Err(Unavailable(format!("cannot reach the zygote: {error}")));
        }
        let status = register(status).map_err(failed)?;
        let pid = match tokio::time::timeout(FORK_TIMEOUT, receive::<Status>(&status)).await {
            Ok(Ok(Some((Status::Spawned(said), credentials)))) => {
                let pid = if self.namespaced {
                    credentials
                } else {
                    i32::try_from(said).ok().and_then(Pid::from_raw)
                };
                pid.ok_or_else(|| unavailable("the zygote named no child pid"))?
            }
            Ok(Ok(Some((Status::Error(error), _)))) => {
                return Err(Unavailable(format!("the zygote could not fork: {error}")));
            }
            Ok(Ok(Some((Status::Exit(_), _)))) => {
                return Err(unavailable("the zygote reported an exit before a spawn"));
            }
            Ok(Ok(None)) => return Err(unavailable("the zygote stopped")),
            Ok(Err(error)) => return Err(Unavailable(format!("the status socket: {error}"))),
            Err(_) => {
                // Stuck: no later execution should wait for it too.
                self.alive.store(false, Ordering::SeqCst);
                return Err(unavailable("the zygote did not fork in time"));
            }
        };
        Ok(Forked {
            pid,
            go: Some(OwnedFd::from(go_write)),
            status_socket: status,
            status: None,
            _zygote: Arc::clone(self),
        })
    }
}

/// One child of the zygote: an execution's jailed process.
#[derive(Debug)]
pub struct Forked {
    pid: Pid,
    go: Option<OwnedFd>,
    /// Where the zygote says how it ended.
    status_socket: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    /// The zygote lives while one of its children runs: its end would kill them.
    _zygote: Arc<Zygote>,
}

impl Forked {
    /// Its pid in the service's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Lets it start (once it is in its cgroup).
    pub fn go(&mut self) -> io::Result<()> {
        match self.go.take() {
            Some(go) => std::fs::File::from(go).write_all(b"g"),
            None => Ok(()),
        }
    }
}

impl Jailed for Forked {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        // Polled again after a cancelled wait (`select!`): `receive` loses nothing then.
        // Without an answer the zygote is gone, and its end was the child's end.
        let raw = loop {
            match receive::<Status>(&self.status_socket).await {
                Ok(Some((Status::Exit(raw), _))) => break raw,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break Signal::KILL.as_raw(),
            }
        };
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        Ok(status)
    }

    fn kill(&mut self) {
        // Never started: closing `go` ends it before it did anything.
        self.go = None;
        if self.status.is_none() {
            let _ = kill_process(self.pid, Signal::KILL);
            let _ = kill_process_group(self.pid, Signal::KILL);
        }
    }
}

/// A cancelled request drops its future mid-way: nothing it started may outlive it.
impl Drop for Forked {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The control socket, made ready for tokio.
#[expect(
    deprecated,
    reason = "AsyncFd::new is deprecated as unsound for a value that may not own its descriptor \
              (tokio#8587); an OwnedFd owns it, and the replacement (register) is an unsafe fn"
)]
fn register(socket: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(socket)
}

/// `bytes` in a memfd called `name`, read from its start by the child.
pub(super) fn memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

/// Sends one message, with `fds` passed along.
async fn send(control: &AsyncFd<OwnedFd>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(7))];
    loop {
        let mut guard = control.writable().await?;
        let sent = guard.try_io(|fd| {
            let mut ancillary = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::other("too many descriptors for one message"));
            }
            rustix::net::sendmsg(
                fd,
                &[IoSlice::new(bytes)],
                &mut ancillary,
                SendFlags::empty(),
            )
            .map_err(io::Error::from)
        });
        match sent {
            Ok(result) => return result.map(drop),
            Err(_would_block) => {}
        }
    }
}

/// Receives one message: what it says and the pid its credentials carry; `None` at the end.
async fn receive<T: DeserializeOwned>(
    control: &AsyncFd<OwnedFd>,
) -> io::Result<Option<(T, Option<Pid>)>> {
    let mut buffer = vec![0; MESSAGE_BYTES];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    loop {
        let mut guard = control.readable().await?;
        let received = guard.try_io(|fd| {
            let mut ancillary = RecvAncillaryBuffer::new(&mut space);
            let message = rustix::net::recvmsg(
                fd,
                &mut [IoSliceMut::new(&mut buffer)],
                &mut ancillary,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            let pid = ancillary.drain().find_map(|message| match message {
                RecvAncillaryMessage::ScmCredentials(credentials) => Some(credentials.pid),
                _ => None,
            });
            Ok((message.bytes, pid))
        });
        match received {
            Ok(Ok((0, _))) => return Ok(None),
            Ok(Ok((bytes, pid))) => {
                let message = serde_json::from_slice(&buffer[..bytes]).map_err(io::Error::other)?;
                return Ok(Some((message, pid)));
            }
            Ok(Err(error)) => return Err(error),
            Err(_would_block) => {}
        }
    }
}

/// The zygote's own output (Python's errors, nsjail's lines), into the service's log.
async fn forward_log(output: Box<dyn tokio::io::AsyncRead + Send + Unpin>) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("[I]") || line.starts_with("[D]") {
            tracing::debug!(target: "pyexec::zygote", "{line}");
        } else {
            tracing::warn!(target: "pyexec::zygote", "{line}");
        }
    }
}
