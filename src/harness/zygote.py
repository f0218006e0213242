"""pyexec's zygote: the warm path. A process inside an nsjail jail that imported the harness,
numpy and pandas once and has never run user code; for each execution it forks a child, and
the child makes itself a fresh jail before any user code runs.

The service starts it as `python -I -u -X utf8 -B zygote.py` inside a jail of the active
profile (src/sandbox/zygote.rs) with a SOCK_SEQPACKET control socket on fd 3, and sends:

  init     {"namespaces": bool, "tmp_bytes": N, "preload": [MODULE, ...],
            "seccomp": {"zygote": [HEX, ...], "script": [HEX, ...]}}
           answered {"ready": pid} once the modules are imported;
  request  {"id": N} with the descriptors [job, stdout, stderr, result, go], answered
           {"id": N, "spawned": pid}, carrying SCM_CREDENTIALS of the child when the
           zygote has a pid namespace of its own (the kernel translates the pid for the
           service), and later {"id": N, "exit": wait_status}.

The job is a memfd the child reads, never the zygote: {"uid": U, "cwd": PATH, "env": {...},
"settings": {...}, "job": {"script": "...", ...}} (the harness's job, src/job.rs). So nothing
of a script ever enters the zygote's memory, which every later child inherits. The child waits on `go` (the service has put it in its
cgroup), then: fresh mount, ipc, uts and net namespaces (the zygote gave it a fresh pid
namespace: it is process 1 there), its own /proc, a private /tmp and /sandbox (the script, as
main.py, read-only), its stdio, a new session, every capability dropped (bounding set
included), its own uid and gid, and the harness's enter(): rlimits, no_new_privs, the seccomp
filters, "started". Then the harness runs the script as in the cold path.
"""

import ctypes
import gc
import json
import os
import select
import signal
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (found beside this file)

CONTROL_FD = 3
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_CAPBSET_DROP, PR_SET_PDEATHSIG, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 1, 47, 4
PR_CAP_AMBIENT_IS_SET, PR_SET_DUMPABLE = 1, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

LIBC = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(source, target, fstype, flags, data=None):
    check(LIBC.mount(source, target, fstype, ctypes.c_ulong(flags), data), f"mount {target!r}")


def prctl(option, argument):
    zero = ctypes.c_ulong(0)
    check(LIBC.prctl(option, ctypes.c_ulong(argument), zero, zero, zero), f"prctl({option})")


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def has_ambient_capabilities():
    """Whether this kernel has an ambient capability set (Linux 4.3 and later; gVisor has
    none): asked once, so a child clears the set where it exists and is not failed where it
    does not. harness.confirm_confined checks the outcome either way."""
    zero = ctypes.c_ulong(0)
    return LIBC.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_IS_SET), zero, zero, zero) >= 0


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class Zygote:
    def __init__(self, control):
        self.control = control
        self.init = json.loads(control.recv(1 << 20))
        for module in self.init["preload"]:
            __import__(module)
        self.script_filters = harness.Filters(self.init["seccomp"]["script"])
        harness.Filters(self.init["seccomp"]["zygote"]).install()
        self.namespaces = self.init["namespaces"]
        self.ambient = has_ambient_capabilities()
        self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY) if self.namespaces else None
        self.children = {}
        # Children are reaped as they end; the wakeup pipe turns SIGCHLD into a readable fd.
        self.wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        # What is imported now stays put: the collector never touches these pages in a child,
        # so forking copies nothing of them.
        gc.collect()
        gc.freeze()
        if len(os.listdir("/proc/self/task")) != 1:
            raise SystemExit("the zygote must be single-threaded to fork safely")
        self.send({"ready": os.getpid()})

    def send(self, message, credentials_pid=None):
        data = json.dumps(message).encode()
        if credentials_pid is None:
            self.control.sendmsg([data])
        else:
            creds = struct.pack("3i", credentials_pid, os.getuid(), os.getgid())
            self.control.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])

    def serve(self):
        poller = select.poll()
        poller.register(self.control.fileno(), select.POLLIN)
        poller.register(self.wake_read, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_read:
                    self.reap()
                elif not self.fork_one():
                    return

    def reap(self):
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            request = self.children.pop(pid, None)
            if request is not None:
                self.send({"id": request, "exit": status})

    def fork_one(self):
        message, fds, _, _ = socket.recv_fds(self.control, 1 << 16, 8)
        if not message:
            return False  # the service closed its end: nothing more to do
        request = json.loads(message)
        try:
            if self.namespaces:
                check(LIBC.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
            pid = os.fork()
        except OSError as error:
            for fd in fds:
                os.close(fd)
            self.send({"id": request["id"], "error": str(error)})
            return True
        if pid == 0:
            child(self, fds)
        if self.namespaces:
            # Back to our own pid namespace, so the next fork gets a fresh one again.
            check(LIBC.setns(self.own_pid_namespace, CLONE_NEWPID), "setns(pid)")
        for fd in fds:
            os.close(fd)
        self.children[pid] = request["id"]
        # In a pid namespace the service cannot use our pid numbers: the kernel translates the
        # credentials (which needs CAP_SYS_ADMIN here, and the jail's user namespace gives
        # it). Without namespaces our pids are the service's, and an unprivileged container
        # could not send another process's credentials at all.
        self.send({"id": request["id"], "spawned": pid}, credentials_pid=pid if self.namespaces else None)
        return True


def child(zygote, fds):
    """Becomes one execution's jail, then its harness; never returns."""
    try:
        job_fd, out_fd, err_fd, result_fd, go_fd = fds
        zygote.control.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(zygote.wake_read)
        if os.read(go_fd, 1) != b"g":
            os._exit(70)  # the service gave up on this execution
        job = json.loads(read_all(job_fd))
        if zygote.namespaces:
            jail(job)
        os.chdir(job["cwd"])
        stdin = os.open("/dev/null", os.O_RDONLY)
        for source, target in ((stdin, 0), (out_fd, 1), (err_fd, 2), (result_fd, 3)):
            os.dup2(source, target)
        os.closerange(4, 1 << 16)
        os.environ.clear()
        os.environ.update(job["env"])
        os.setsid()
        drop_privileges(job["uid"], zygote.ambient)
        reporter = harness.enter(job["settings"], zygote.script_filters)
        harness.run(reporter, job["settings"]["limits"], job["job"])
    except BaseException as error:
        try:
            os.write(2, f"pyexec: the warm sandbox could not start: {error!r}\n".encode())
        finally:
            os._exit(71)


def jail(job):
    """Fresh namespaces and mounts for one execution (it is already process 1 of its own pid
    namespace): nothing another execution had or has."""
    check(LIBC.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET), "unshare")
    mount(None, b"/", None, MS_REC | MS_PRIVATE)
    mount(b"proc", b"/proc", b"proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    uid = job["uid"]
    tmp = f"size={job['tmp_bytes']},mode=0700,uid={uid},gid={uid}".encode()
    mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, tmp)
    source = job["job"]["script"].encode("utf-8", "surrogatepass")
    sandbox = f"size={len(source) + 65536},mode=0755".encode()
    mount(b"tmpfs", b"/sandbox", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, sandbox)
    fd = os.open(f"/sandbox/{harness.SCRIPT_FILENAME}", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, source)
    os.close(fd)
    mount(None, b"/sandbox", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def drop_privileges(uid, ambient):
    """Its own uid and gid, no supplementary groups, no capability in any set: the bounding
    and ambient sets dropped while it may, the uid change empties the permitted and effective
    sets, and capset the inheritable one, which a uid change keeps."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for capability in range(last + 1):
        prctl(PR_CAPBSET_DROP, capability)
    if ambient:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    header, nothing = CapHeader(LINUX_CAPABILITY_VERSION_3, 0), (CapData * 2)()
    check(LIBC.capset(ctypes.byref(header), nothing), "capset")
    # Both reset by the uid change, so set after it: the zygote's end is this execution's end;
    # and the process is its own again (its /proc entries), as after the exec of a cold jail.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(PR_SET_DUMPABLE, 1)


def main():
    control = socket.socket(fileno=CONTROL_FD)
    Zygote(control).serve()


if __name__ == "__main__":
    main()
