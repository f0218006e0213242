"""pyexec's zygote: the warm path. A process that imported the harness, numpy and pandas once
and has never run user code; for each execution it forks a child, and the child makes itself a
fresh jail before any user code runs.

The service starts it as `python -I -u -X utf8 -B zygote.py` (in `strict` inside an nsjail jail
of its own; in `cloudrun` directly, see src/sandbox/command.rs) with a SOCK_SEQPACKET control
socket on fd 3, and sends (the Rust types are in src/sandbox/documents.rs, the golden copies
in golden/documents/, checked on both sides):

  init     {"namespaces": bool, "preload": [MODULE, ...], "seccomp": {"zygote": [HEX, ...],
            "script": [HEX, ...]}, "masks": [[SOURCE, TARGET], ...]}
           answered {"ready": pid} once the modules are imported;
  fork     {"fork": {}} with the descriptors [jail, job, stdout, stderr, result, go, status].

Each child has its own status socket (as CPython's forkserver gives each child its own pipe):
the zygote answers on it {"spawned": pid}, with SCM_CREDENTIALS of the child when the zygote
has a pid namespace of its own (the kernel translates the pid for the service), or
{"error": why}; later {"exit": wait_status}; then closes it. So the zygote keeps no request ids,
no counter, nothing of one execution that another could find.

`jail` is a memfd with what the child needs to make itself a jail, written by the service:
{"uid": U, "cwd": PATH, "tmp_bytes": N, "env": {...}, "settings": {...}}. `job` is a memfd
with the harness's job (src/job.rs: the script, input, files), which the child reads only once
the harness has said "started", under the execution's own limits; the zygote never reads
either, so nothing of a script ever enters the memory every later child starts as a copy of.

The child waits on `go` (the service has put it in its cgroup), then leaves the zygote's call
stack: `serve` returns into `main`, so no frame a script can walk up to holds the zygote. Then:
fresh mount, ipc, uts and net namespaces (the zygote gave it a fresh pid namespace: it is
process 1 there), its own /proc with the host-wide counters masked, a private /tmp and an
its stdio, a new session, every capability dropped (bounding and
inheritable sets, the ambient set where the kernel has one), its own uid and gid, every random
generator the preloaded modules hold reseeded from the kernel, and the harness's enter():
rlimits, no_new_privs, the seccomp filters, the confinement check, "started". Then the harness
reads the job and runs the script as in the cold path.
"""

import ctypes
import gc
import json
import os
import random
import select
import signal
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (found beside this file)
import pyexec_confine  # noqa: E402

CONTROL_FD = 3
# In the child: where the job's memfd is until the harness reads it (its settings say so too).
JOB_FD = 5
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MS_MOVE, MNT_DETACH = 0x2000, 2
# Where a child mounts its /proc before moving it over the zygote's (made by the zygote).
PROC_STAGE = b"/tmp/proc"
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


MADV_COLLAPSE, HUGE_PAGE = 25, 2 << 20


def collapse_heap():
    """Backs the zygote's private anonymous memory (the imported modules' objects, about 20 of
    its 44 MiB) with huge pages where whole 2 MiB runs of it lie: a fork then copies one page
    table entry for each 2 MiB instead of 512, and a child's exit tears down as few (measured:
    fork and exit 15% cheaper; a child's first write to such a page still copies only 4 KiB).
    Best effort: a kernel before 6.1 or gVisor refuses it, and nothing else changes."""
    LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:
        anonymous = len(fields) == 5 or fields[5] == "[heap]"
        if fields[1] != "rw-p" or not anonymous:
            continue
        low, high = (int(end, 16) for end in fields[0].split("-"))
        start, end = (low + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), high & ~(HUGE_PAGE - 1)
        if end - start >= HUGE_PAGE:
            LIBC.madvise(start, end - start, MADV_COLLAPSE)


def has_ambient_capabilities():
    """Whether this kernel has an ambient capability set (Linux 4.3 and later; gVisor has
    none): asked once, so a child clears the set where it exists and is not failed where it
    does not. pyexec_confine.confirm_confined checks the outcome either way."""
    zero = ctypes.c_ulong(0)
    return LIBC.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_IS_SET), zero, zero, zero) >= 0


def random_generators():
    """Every random generator the loaded modules hold at their top level: what a fork would
    hand every child the same state of (numpy's global RandomState first among them). Found by
    looking, not from a list, so a module that brings its own is reseeded too."""
    kinds = [random.Random]
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        kinds += [numpy_random.RandomState, numpy_random.Generator, numpy_random.BitGenerator]
    kinds = tuple(kinds)
    found = {}
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, kinds) and not isinstance(value, random.SystemRandom):
                found[id(value)] = value
    return list(found.values())


def reseed(generators):
    """Fresh state from the kernel for each generator `random_generators` found."""
    numpy_random = sys.modules.get("numpy.random")
    for generator in generators:
        if isinstance(generator, random.Random):
            generator.seed()
        elif isinstance(generator, numpy_random.RandomState):
            generator.seed()
        elif isinstance(generator, numpy_random.Generator):
            generator.bit_generator.state = type(generator.bit_generator)().state
        else:
            generator.state = type(generator)().state


def read_init(doc):
    """The init message (`ZygoteInit`)."""
    harness.document(doc, ("namespaces", "preload", "seccomp", "masks"))
    harness.document(doc["seccomp"], ("zygote", "script"))
    return doc


def read_jail(doc):
    """A child's jail settings (`WarmJail`)."""
    harness.document(doc, ("uid", "cwd", "tmp_bytes", "env", "settings"))
    harness.read_settings(doc["settings"])
    if doc["settings"]["job_fd"] != JOB_FD:
        raise ValueError(f"the job is on descriptor {JOB_FD} in a warm child")
    return doc


def is_fork_request(doc):
    """Whether a control message is a fork request (`ForkRequest`)."""
    return harness.document(doc, ("fork",)) == {"fork": {}}


# The replies (`Ready`, `Status`).
def ready(pid):
    return {"ready": pid}


def spawned(pid):
    return {"spawned": pid}


def fork_error(why):
    return {"error": why}


def exited(status):
    return {"exit": status}


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def send(fd, message, credentials_pid=None):
    """One message on the socket `fd`, which stays open (a socket object would close it)."""
    sock = socket.socket(fileno=fd)
    try:
        data = json.dumps(message).encode()
        if credentials_pid is None:
            sock.sendmsg([data])
        else:
            creds = struct.pack("3i", credentials_pid, os.getuid(), os.getgid())
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
    finally:
        sock.detach()


class Child:
    """What a forked child takes with it out of the zygote: its descriptors and what the
    zygote prepared for every child. Nothing of other executions."""

    def __init__(self, fds, zygote):
        self.jail_fd, self.job_fd, self.out_fd, self.err_fd, self.result_fd, self.go_fd = fds
        self.filters = zygote.script_filters
        self.generators = zygote.generators
        self.namespaces = zygote.namespaces
        self.ambient = zygote.ambient
        self.masks = zygote.masks


class Zygote:
    def __init__(self, control):
        self.control = control
        init = read_init(json.loads(control.recv(1 << 20)))
        for module in init["preload"]:
            __import__(module)
        self.script_filters = pyexec_confine.Filters(init["seccomp"]["script"])
        pyexec_confine.Filters(init["seccomp"]["zygote"]).install()
        self.namespaces = init["namespaces"]
        self.masks = [(source.encode(), target.encode()) for source, target in init["masks"]]
        self.ambient = has_ambient_capabilities()
        self.generators = random_generators()
        if self.namespaces:
            os.makedirs(PROC_STAGE, exist_ok=True)
        self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY) if self.namespaces else None
        # Each child's status socket, by pid.
        self.children = {}
        # Children are reaped as they end; the wakeup pipe turns SIGCHLD into a readable fd.
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        # What is imported now stays put: the collector never touches these pages in a child,
        # so forking copies nothing of them.
        gc.collect()
        gc.freeze()
        collapse_heap()
        if len(os.listdir("/proc/self/task")) != 1:
            raise SystemExit("the zygote must be single-threaded to fork safely")
        self.control.sendmsg([json.dumps(ready(os.getpid())).encode()])

    def serve(self):
        """Forks a child per request until the service closes the control socket; returns only
        in a child, with what it takes along."""
        poller = select.poll()
        poller.register(self.control.fileno(), select.POLLIN)
        poller.register(self.wake_read, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_read:
                    self.reap()
                    continue
                message, fds, _, _ = socket.recv_fds(self.control, 1 << 16, 8)
                if not message:
                    raise SystemExit(0)  # the service closed its end: nothing more to do
                if not is_fork_request(json.loads(message)):
                    raise SystemExit("pyexec zygote: not a fork request")
                child = self.fork_one(fds)
                if child is not None:
                    return child

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
            status_fd = self.children.pop(pid, None)
            if status_fd is not None:
                try:
                    send(status_fd, exited(status))
                except OSError:
                    pass  # the service gave up on it
                os.close(status_fd)

    def fork_one(self, fds):
        """Forks one child for the descriptors of a request; the child's `Child` in the child,
        None in the zygote."""
        if len(fds) != 7:
            for fd in fds:
                os.close(fd)
            return None
        *theirs, status_fd = fds
        try:
            if self.namespaces:
                check(LIBC.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
            pid = os.fork()
        except OSError as error:
            for fd in theirs:
                os.close(fd)
            try:
                send(status_fd, fork_error(str(error)))
            finally:
                os.close(status_fd)
            return None
        if pid == 0:
            return self.leave(theirs, status_fd)
        if self.namespaces:
            # Back to our own pid namespace, so the next fork gets a fresh one again.
            check(LIBC.setns(self.own_pid_namespace, CLONE_NEWPID), "setns(pid)")
        for fd in theirs:
            os.close(fd)
        self.children[pid] = status_fd
        # In a pid namespace the service cannot use our pid numbers: the kernel translates the
        # credentials (which needs CAP_SYS_ADMIN here, and the jail's user namespace gives
        # it). Without namespaces our pids are the service's, and an unprivileged container
        # could not send another process's credentials at all.
        try:
            send(status_fd, spawned(pid), credentials_pid=pid if self.namespaces else None)
        except OSError:
            pass  # the service gave up on it: it never gets `go`, and ends by itself
        return None

    def leave(self, theirs, status_fd):
        """In a fresh child: lets go of everything of the zygote's, so that once `serve` has
        returned nothing of it is left to find."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.control.close()
        for fd in [self.wake_read, self.wake_write, status_fd, *self.children.values()]:
            os.close(fd)
        if self.own_pid_namespace is not None:
            os.close(self.own_pid_namespace)
        self.children.clear()
        return Child(theirs, self)


def become_execution(child):
    """Makes this child one execution's jail, then its harness; never returns."""
    try:
        if os.read(child.go_fd, 1) != b"g":
            os._exit(70)  # the service gave up on this execution
        os.close(child.go_fd)
        jail_doc = read_jail(json.loads(read_all(child.jail_fd)))
        os.close(child.jail_fd)
        if child.namespaces:
            jail(jail_doc, child.masks)
        os.chdir(jail_doc["cwd"])
        stdin = os.open("/dev/null", os.O_RDONLY)
        for source, target in ((stdin, 0), (child.out_fd, 1), (child.err_fd, 2),
                               (child.result_fd, 3), (child.job_fd, JOB_FD)):
            os.dup2(source, target)
        os.closerange(JOB_FD + 1, 1 << 16)
        os.environ.clear()
        os.environ.update(jail_doc["env"])
        os.setsid()
        drop_privileges(jail_doc["uid"], child.ambient)
        reseed(child.generators)
        settings, filters = jail_doc["settings"], child.filters
        del child, jail_doc
        reporter = harness.enter(settings, filters)
        harness.run(reporter, settings["limits"], lambda: harness.read_job(JOB_FD))
    except BaseException as error:
        try:
            os.write(2, f"pyexec: the warm sandbox could not start: {error!r}\n".encode())
        finally:
            os._exit(71)


def jail(jail_doc, masks):
    """Fresh namespaces and mounts for one execution (it is already process 1 of its own pid
    namespace): nothing another execution had or has."""
    check(LIBC.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET), "unshare")
    mount(None, b"/", None, MS_REC | MS_PRIVATE)
    # The zygote's own /proc and /tmp go, so the child's replace them rather than stack on
    # them: its mounts are a cold jail's, flag for flag (tests/escape.rs compares them). A
    # user namespace may mount a proc only while another is fully visible, so the new one is
    # made beside the old (PROC_STAGE), the old unmounted, and the new moved into place.
    mount(b"proc", PROC_STAGE, b"proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    check(LIBC.umount2(b"/proc", MNT_DETACH), "umount /proc")
    mount(PROC_STAGE, b"/proc", None, MS_MOVE)
    check(LIBC.umount2(b"/tmp", MNT_DETACH), "umount /tmp")
    for source, target in masks:
        mount(source, target, None, MS_BIND)
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    uid = jail_doc["uid"]
    tmp = f"size={jail_doc['tmp_bytes']},mode=0700,uid={uid},gid={uid}".encode()
    mount(b"tmpfs", b"/tmp", b"tmpfs", 0, tmp)


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
    # `serve` returns only in a child, with the zygote gone from the stack and from memory;
    # what it returns is referenced from `become_execution`'s frame alone, which lets it go.
    become_execution(Zygote(socket.socket(fileno=CONTROL_FD)).serve())


if __name__ == "__main__":
    main()
