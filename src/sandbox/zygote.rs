//! The warm path's host side. One zygote per instance: a Python process inside a jail of the
//! active profile (`command::zygote`) that imported the harness, numpy and pandas once and has
//! never run user code. For each execution the service asks it, over a `SOCK_SEQPACKET`
//! control socket, for one child, handing it the execution's pipes and a job (the script and
//! its settings, in a memfd only the child reads); the zygote answers with the child's pid (as
//! `SCM_CREDENTIALS`, which the kernel translates into the service's pid namespace, when the
//! zygote has a pid namespace of its own; without namespaces, in the message), the
//! service puts that pid in the execution's cgroup and lets the child go, and the zygote
//! reports its wait status when it ends. The child jails itself before any user code runs (see
//! `src/harness/zygote.py`); the service supervises it like a cold jail
//! (`process::supervise`) and classifies it with the same code.
//!
//! Why a zygote and not a pool of pre-started jails: a pool only hides latency (each jail still
//! pays nsjail, the interpreter and the imports in CPU, and B0 alone is about 15 ms of CPU),
//! while forking a pre-imported process costs about 3 ms, so it also raises throughput, which a
//! 2-core machine needs; and a child of the zygote gets fresh namespaces, uid, `/tmp` and
//! filters just as a cold jail does. See BENCHMARKS.md and the closing note of issue 9.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

use super::command::{self, ZygoteJail};
use super::process::Jailed;
use crate::config::{Profile, SandboxConfig};

/// How long to wait before starting a zygote again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// How long the zygote may take to import what it preloads.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fork may take before the zygote is deemed stuck.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest control message.
const MESSAGE_BYTES: usize = 64 * 1024;

/// The warm path of one instance: how to start its zygote, the one running, and its restarts.
#[derive(Debug)]
pub struct Warm {
    config: SandboxConfig,
    profile: Profile,
    dir: PathBuf,
    uid: u32,
    slot_uids: Range<u32>,
    init: Value,
    zygote: Mutex<Option<Arc<Zygote>>>,
    restarting: AtomicBool,
}

impl Warm {
    /// The warm path for a jail of `profile` with its files in `dir`, run as `uid`, its
    /// children as `slot_uids`; `init` is what the zygote is told at start.
    pub fn new(
        config: SandboxConfig,
        profile: Profile,
        dir: PathBuf,
        uid: u32,
        slot_uids: Range<u32>,
        init: Value,
    ) -> Self {
        Self {
            config,
            profile,
            dir,
            uid,
            slot_uids,
            init,
            zygote: Mutex::new(None),
            restarting: AtomicBool::new(false),
        }
    }

    /// The profile its zygote's children run in.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The zygote, while it runs.
    pub fn zygote(&self) -> Option<Arc<Zygote>> {
        let zygote = self.zygote.lock().unwrap_or_else(PoisonError::into_inner);
        zygote.as_ref().filter(|zygote| zygote.is_alive()).cloned()
    }

    /// Starts a zygote and makes it the one in use.
    pub async fn start(&self) -> Result<(), String> {
        let jail = ZygoteJail {
            config: &self.config,
            profile: self.profile,
            dir: &self.dir,
            uid: self.uid,
            slot_uids: self.slot_uids.clone(),
        };
        let zygote = Zygote::start(&jail, &self.init).await?;
        *self.zygote.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(zygote));
        Ok(())
    }

    /// Starts a new zygote in the background after a pause, once at a time; executions run
    /// cold meanwhile.
    pub fn restart(self: &Arc<Self>) {
        if self.restarting.swap(true, Ordering::SeqCst) {
            return;
        }
        let warm = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(RESTART_PAUSE).await;
            match warm.start().await {
                Ok(()) => tracing::info!("the warm path is back"),
                Err(reason) => {
                    tracing::error!(reason, "the warm path did not come back; scripts run cold");
                }
            }
            warm.restarting.store(false, Ordering::SeqCst);
        });
    }
}

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    control: Arc<AsyncFd<OwnedFd>>,
    pending: Arc<Mutex<HashMap<u64, Waiters>>>,
    next: AtomicU64,
    alive: Arc<AtomicBool>,
    /// Its jail (nsjail), killed with the zygote.
    _jail: tokio::process::Child,
}

/// Who waits for what about one request.
#[derive(Debug, Default)]
struct Waiters {
    spawned: Option<oneshot::Sender<Result<Pid, String>>>,
    exited: Option<oneshot::Sender<i32>>,
}

/// The zygote could not serve a request: the execution should go the cold way.
#[derive(Debug, thiserror::Error)]
#[error("the warm sandbox is unavailable: {0}")]
pub struct Unavailable(pub String);

impl Zygote {
    /// Starts the zygote in `jail` and waits until it has imported everything `init` asks for.
    pub async fn start(jail: &ZygoteJail<'_>, init: &Value) -> Result<Self, String> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|error| format!("socketpair: {error}"))?;
        rustix::net::sockopt::set_socket_passcred(&ours, true)
            .map_err(|error| format!("SO_PASSCRED: {error}"))?;
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
        send(&control, &serde_json::to_vec(init).unwrap_or_default(), &[])
            .await
            .map_err(|error| format!("cannot reach the zygote: {error}"))?;
        let ready = tokio::time::timeout(START_TIMEOUT, receive(&control))
            .await
            .map_err(|_| "the zygote did not get ready in time".to_owned())?
            .map_err(|error| format!("the zygote's control socket: {error}"))?;
        match ready.map(|(message, _)| message) {
            Some(message) if message.get("ready").is_some() => {}
            other => return Err(format!("the zygote failed to start: {other:?}")),
        }
        let pending = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(read_loop(
            Arc::clone(&control),
            Arc::clone(&pending),
            Arc::clone(&alive),
            jail.profile.namespaced(),
        ));
        Ok(Self {
            control,
            pending,
            next: AtomicU64::new(0),
            alive,
            _jail: child,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Asks for one child running `job`, with `outputs` (stdout, stderr, result: write ends)
    /// as its stdio and result channel; the child waits for [`Forked::go`].
    pub async fn fork(&self, job: &[u8], outputs: [OwnedFd; 3]) -> Result<Forked, Unavailable> {
        let unavailable = |what: &str| Unavailable(what.to_owned());
        if !self.is_alive() {
            return Err(unavailable("the zygote is not running"));
        }
        let job = memfd(job).map_err(|error| Unavailable(format!("the job: {error}")))?;
        let (go_read, go_write) = io::pipe().map_err(|error| Unavailable(error.to_string()))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (spawned_tx, spawned_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id,
                Waiters {
                    spawned: Some(spawned_tx),
                    exited: Some(exited_tx),
                },
            );
        let go_read = OwnedFd::from(go_read);
        let fds = [
            job.as_fd(),
            outputs[0].as_fd(),
            outputs[1].as_fd(),
            outputs[2].as_fd(),
            go_read.as_fd(),
        ];
        let request = serde_json::to_vec(&json!({ "id": id })).unwrap_or_default();
        let sent = send(&self.control, &request, &fds).await;
        // Ours are no longer needed: the child's copies are what it writes to and reads.
        drop((job, outputs, go_read));
        let forget = || {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        };
        if let Err(error) = sent {
            forget();
            return Err(Unavailable(format!("cannot reach the zygote: {error}")));
        }
        let pid = match tokio::time::timeout(FORK_TIMEOUT, spawned_rx).await {
            Ok(Ok(Ok(pid))) => pid,
            Ok(Ok(Err(error))) => {
                forget();
                return Err(Unavailable(format!("the zygote could not fork: {error}")));
            }
            Ok(Err(_)) => return Err(unavailable("the zygote stopped")),
            Err(_) => {
                forget();
                return Err(unavailable("the zygote did not fork in time"));
            }
        };
        Ok(Forked {
            pid,
            go: Some(OwnedFd::from(go_write)),
            exited: Some(exited_rx),
            status: None,
        })
    }
}

/// One child of the zygote: an execution's jailed process.
#[derive(Debug)]
pub struct Forked {
    pid: Pid,
    go: Option<OwnedFd>,
    exited: Option<oneshot::Receiver<i32>>,
    status: Option<ExitStatus>,
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
        // Polled again after a cancelled wait (`select!`), so the receiver stays until it
        // answers. Without an answer the zygote is gone, and its end was the child's end.
        let raw = match &mut self.exited {
            Some(exited) => exited.await.unwrap_or(Signal::KILL.as_raw()),
            None => Signal::KILL.as_raw(),
        };
        self.exited = None;
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

/// The job in a memfd, read from its start by the child.
fn memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("pyexec-job", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

/// Routes the zygote's messages to the executions waiting for them; when the zygote ends,
/// every waiter learns it. A child's pid comes from the credentials the kernel translated
/// when the zygote is in a pid namespace of its own; without namespaces its pids are the
/// service's, and it says the pid in the message (sending another process's pid as
/// credentials takes `CAP_SYS_ADMIN`, which an unprivileged container lacks).
async fn read_loop(
    control: Arc<AsyncFd<OwnedFd>>,
    pending: Arc<Mutex<HashMap<u64, Waiters>>>,
    alive: Arc<AtomicBool>,
    namespaced: bool,
) {
    while let Ok(Some((message, pid))) = receive(&control).await {
        let Some(id) = message["id"].as_u64() else {
            continue;
        };
        let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(waiters) = pending.get_mut(&id) else {
            continue;
        };
        if let Some(said) = message.get("spawned") {
            let pid = if namespaced {
                pid
            } else {
                said.as_i64()
                    .and_then(|pid| i32::try_from(pid).ok())
                    .and_then(Pid::from_raw)
            };
            if let Some(spawned) = waiters.spawned.take() {
                let _ = spawned.send(pid.ok_or_else(|| "no child pid".to_owned()));
            }
        } else if let Some(error) = message["error"].as_str() {
            if let Some(spawned) = waiters.spawned.take() {
                let _ = spawned.send(Err(error.to_owned()));
            }
            pending.remove(&id);
        } else if let Some(status) = message["exit"].as_i64() {
            if let Some(exited) = waiters.exited.take() {
                let _ = exited.send(i32::try_from(status).unwrap_or(-1));
            }
            pending.remove(&id);
        }
    }
    alive.store(false, Ordering::SeqCst);
    tracing::error!("the zygote stopped; executions go the cold way until it is back");
    // Dropping the senders tells every waiter.
    pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

/// Sends one message, with `fds` passed along.
async fn send(control: &AsyncFd<OwnedFd>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(5))];
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

/// Receives one message: its JSON and the pid its credentials carry; `None` at the end.
async fn receive(control: &AsyncFd<OwnedFd>) -> io::Result<Option<(Value, Option<Pid>)>> {
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
