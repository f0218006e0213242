//! The escape suite's cases: one small attack per case, with the outcome each profile must
//! come to. Shared by tests/it/escape.rs (the service in-process, in every profile and path) and
//! tests/image.rs (the container image, with and without namespaces), so both run the same
//! attacks and SECURITY.md's table (checked by tests/it/escape.rs) covers both.

use std::fmt;

use serde_json::Value;

use super::error_code;
use super::events::{Events, READY, result_of};

/// What a case must come to.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// 200, and `main()` returned this string.
    Returns(&'static str),
    /// 400 with this code, and the message mentions the text.
    Fails(&'static str, &'static str),
    /// 200 with stdout cut at the cap and flagged.
    Truncated,
}

impl fmt::Display for Expect {
    /// How SECURITY.md writes the outcome.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Returns(value) => write!(f, "`{value}`"),
            Self::Fails(code, _) => write!(f, "400 `{code}`"),
            Self::Truncated => write!(f, "200, stdout truncated"),
        }
    }
}

/// What `capabilities` reads in every jail: `no_new_privs`, no capability in any set it shows,
/// a seccomp filter.
const CONFINED: &str = "NoNewPrivs=1 CapInh=0000000000000000 CapPrm=0000000000000000 \
                        CapEff=0000000000000000 CapBnd=0000000000000000 Seccomp=2";

/// The cases the image test runs under gVisor whose outcome there differs from `cloudrun` on
/// Linux, and why; every other case it runs there holds as in the `cloudrun` column.
pub const GVISOR_DIFFERS: &[(&str, Expect, &str)] = &[
    (
        "read_service_process",
        Returns("readable: environ, cmdline"),
        "gVisor's `/proc` does not apply Linux's ptrace access check to `environ`: any uid reads \
         any process's environment",
    ),
    (
        "read_proc_1_environ",
        Returns("read"),
        "the same: the container's init (tini) and its environment, which is the container's",
    ),
    (
        "kill_every_process",
        Returns("no other process visible"),
        "gVisor answers `kill(-1)` with `ESRCH` when the caller may signal no process, Linux \
         with success; either way the concurrent execution finishes unharmed",
    ),
];

/// Collects, as JSON, every value a script can read that two fresh processes should not share
/// (`state_probe.py`), for `same_state_as_the_previous_execution`.
const STATE_PROBE: &str = concat!(
    include_str!("state_probe.py"),
    r#"
import json
def main():
    return json.dumps(probe())
"#
);

/// Another execution that runs at the same time as the attack: it is started first and prints
/// `ready` (`events::READY`) once it is in place, and the attack starts only when the runner
/// has read that line, so a case never rests on a guess of how long a start takes.
pub struct Neighbour {
    pub script: &'static str,
    pub returns: &'static str,
}

impl Neighbour {
    /// Starts the neighbour on the service at `url` (`…/execute`) and returns its stream once
    /// it has said `ready`; what it said instead when it never did.
    pub async fn start(
        &self,
        client: &reqwest::Client,
        url: &str,
        values: &Placeholders,
    ) -> Result<Events, String> {
        let mut events = Events::script(client, url, &fill(self.script, values, "")).await;
        match events.until_stdout(READY).await {
            Ok(_) => Ok(events),
            Err(seen) => Err(format!("the neighbour never said ready: {seen:?}")),
        }
    }

    /// Reads the rest of the neighbour's stream: how it was harmed, if it was.
    pub async fn harm(&self, events: Events) -> Option<String> {
        let (status, body) = result_of(&events.rest().await);
        mismatch(Returns(self.returns), status, &body)
            .map(|harm| format!("the concurrent execution was harmed: {harm}"))
    }
}

pub struct Case {
    pub name: &'static str,
    pub script: &'static str,
    pub strict: Expect,
    pub cloudrun: Expect,
    /// Runs to completion before the attack; its result replaces `{BEFORE}` in the attack.
    pub before: Option<&'static str>,
    pub during: Option<Neighbour>,
}

const fn case(name: &'static str, script: &'static str, strict: Expect, cloudrun: Expect) -> Case {
    Case {
        name,
        script,
        strict,
        cloudrun,
        before: None,
        during: None,
    }
}

pub use Expect::{Fails, Returns, Truncated};

const VICTIM: &str = r#"
import os, tempfile, time
def main():
    secret = "SEC" + "RET-" + "{NONCE}"
    with open(os.path.join(tempfile.gettempdir(), "secret.txt"), "w") as f:
        f.write(secret)
    try:
        with open("/tmp/pyexec-victim-{NONCE}", "w") as f:
            f.write(secret)
    except OSError:
        pass
    print("ready")
    time.sleep({HOLD})
    return "victim finished"
"#;

/// Leaves a canary everywhere an execution can: its memory (many copies), its environment, a
/// file in its temp directory and in `/tmp` (private to its uid, as files are unless a script
/// shares them; `tmp_visible_*` cover those), and a process of its own that carries it in its
/// environment. The canary is the prefix and the nonce
/// together; neither script below ever holds the two side by side in its source.
const LEAVE_CANARY: &str = r#"
import os, subprocess, tempfile, time
CANARY = "PYEXEC-CANARY-" + str({NONCE})
def main():
    held = [CANARY + " " * i for i in range(1000)]
    os.environ["PYEXEC_LEFT"] = CANARY
    for d in [tempfile.gettempdir(), "/tmp"]:
        try:
            path = os.path.join(d, "pyexec-canary-{NONCE}")
            with open(path, "w") as f:
                f.write(CANARY)
        except OSError:
            pass
    subprocess.Popen(["/bin/sleep", "60"], env={"PYEXEC_LEFT": CANARY})
    print("ready")
    time.sleep({HOLD})
    return "left"
"#;

/// Looks for the canary everywhere it can read: its own memory (a child of the zygote starts
/// as a copy of it), its environment, the files of every temp directory it can see and every
/// process's arguments and environment it may read.
const SEARCH_CANARY: &str = concat!(
    r#"
import os, re, stat, tempfile
WANTED = {NONCE}
PREFIX = b"PYEXEC-" + b"CANARY-"
"#,
    include_str!("files_under.py"),
    r#"
def has_canary(data):
    for match in re.finditer(re.escape(PREFIX) + rb"(\d+)", data):
        if int(match.group(1)) == WANTED:
            return True
    return False
def main():
    found = []
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar" in line or "[vsyscall" in line:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if has_canary(mem.read(end - start)):
                    found.append("memory")
                    break
            except (OSError, ValueError, OverflowError):
                pass
    if any(has_canary(v.encode()) for v in os.environ.values()):
        found.append("environment")
    for root in {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm", os.getcwd()}:
        for path in files_under(root):
            try:
                # Small regular files only: a link could lead to a big host file.
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_size <= 4096:
                    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK | os.O_NOFOLLOW)) as f:
                        if has_canary(f.read(4096)):
                            found.append("file " + path)
            except OSError:
                pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    if has_canary(f.read()):
                        found.append(f"process {pid} {part}")
            except OSError:
                pass
    return "found in: " + ", ".join(found) if found else "not found"
"#
);

#[expect(
    clippy::too_many_lines,
    reason = "one table of cases, read top to bottom"
)]
pub fn cases() -> Vec<Case> {
    vec![
        case(
            "read_host_files",
            r#"
def main():
    try:
        open("/etc/passwd").read()
        return "read"
    except FileNotFoundError:
        return "missing"
"#,
            Returns("missing"),
            Returns("read"),
        ),
        case(
            "read_service_files",
            r#"
def main():
    try:
        open("/opt/pyexec/bin/nsjail", "rb").read(4)
        return "read"
    except FileNotFoundError:
        return "missing"
"#,
            Returns("missing"),
            Returns("read"),
        ),
        case(
            "read_service_process",
            r#"
def main():
    readable = []
    for name in ["environ", "exe", "cwd/.", "root/etc/hostname", "mem", "cmdline"]:
        try:
            with open(f"/proc/{SERVICE_PID}/{name}", "rb") as f:
                f.read(1)
            readable.append(name)
        except FileNotFoundError:
            return "no such process"
        except OSError:
            pass
    return "readable: " + (", ".join(readable) or "nothing")
"#,
            Returns("no such process"),
            Returns("readable: cmdline"),
        ),
        case(
            "read_environment",
            r#"
import os
ALLOWED = {"PATH", "TMPDIR", "HOME", "LC_CTYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
           "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"}
def main():
    extra = sorted(set(os.environ) - ALLOWED)
    return "clean" if not extra else "extra: " + ", ".join(extra)
"#,
            Returns("clean"),
            Returns("clean"),
        ),
        case(
            "read_proc_1_environ",
            r#"
import os
def main():
    if os.getpid() == 1:
        return "its own"
    try:
        open("/proc/1/environ", "rb").read()
    except OSError as e:
        return type(e).__name__
    return "read"
"#,
            Returns("its own"),
            Returns("PermissionError"),
        ),
        case(
            "see_host_processes",
            r#"
import os
def main():
    return "visible" if os.path.exists("/proc/{SERVICE_PID}") else "hidden"
"#,
            Returns("hidden"),
            Returns("visible"),
        ),
        case(
            "write_outside_tmp",
            r#"
import os, tempfile
def main():
    wrote = []
    # The last two hold the harness and the job: /sandbox in a namespaced jail, the
    # execution's directory on the host without one (the working directory is writable).
    harness_dirs = ["/sandbox", os.path.dirname(tempfile.gettempdir())]
    for d in ["/", "/usr", "/etc", "/opt/pyexec/sandbox", "/proc"] + harness_dirs:
        try:
            with open(os.path.join(d, "pyexec-escape-test"), "w") as f:
                f.write("x")
            wrote.append(d)
        except OSError:
            pass
    return "wrote: " + ", ".join(wrote) if wrote else "denied everywhere"
"#,
            Returns("denied everywhere"),
            Returns("denied everywhere"),
        ),
        Case {
            before: Some(
                r#"
import os, tempfile
def main():
    wrote = []
    for d in [tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm", "/run/lock"]:
        path = os.path.join(d, "pyexec-leftover-{NONCE}")
        try:
            with open(path, "w") as f:
                f.write("left behind")
            os.chmod(path, 0o666)
            wrote.append(path)
        except OSError:
            pass
    return "|".join(wrote)
"#,
            ),
            ..case(
                "tmp_visible_to_the_next_execution",
                r#"
import os
def main():
    found = [p for p in "{BEFORE}".split("|") if p and os.path.exists(p)]
    return "found: " + ", ".join(found) if found else "gone"
"#,
                Returns("gone"),
                Returns("gone"),
            )
        },
        Case {
            during: Some(Neighbour {
                script: VICTIM,
                returns: "victim finished",
            }),
            ..case(
                "tmp_visible_to_a_concurrent_execution",
                concat!(
                    r#"
import os, stat
"#,
                    include_str!("files_under.py"),
                    r#"
def main():
    wanted, seen = ("SEC" + "RET-" + "{NONCE}").encode(), 0
    for root in ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]:
        for path in files_under(root):
            seen += 1
            if seen > 20000:
                return "gave up"
            try:
                # The secret is a small regular file; the host's big files would only eat
                # the time limit, and a FIFO someone holds open has nothing to read.
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
                    continue
                with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
                    if wanted in f.read(4096):
                        return "found in " + path
            except OSError:
                pass
    return "not found"
"#
                ),
                Returns("not found"),
                Returns("not found"),
            )
        },
        Case {
            during: Some(Neighbour {
                script: VICTIM,
                returns: "victim finished",
            }),
            ..case(
                "list_a_concurrent_execution_s_files",
                r#"
import os
def main():
    return "listed" if "pyexec-victim-{NONCE}" in os.listdir("/tmp") else "not listed"
"#,
                Returns("not listed"),
                Returns("listed"),
            )
        },
        Case {
            before: Some(LEAVE_CANARY),
            ..case(
                "find_the_previous_execution_s_traces",
                SEARCH_CANARY,
                Returns("not found"),
                Returns("not found"),
            )
        },
        Case {
            during: Some(Neighbour {
                script: LEAVE_CANARY,
                returns: "left",
            }),
            ..case(
                "find_a_concurrent_execution_s_memory_and_files",
                SEARCH_CANARY,
                Returns("not found"),
                Returns("not found"),
            )
        },
        Case {
            before: Some(STATE_PROBE),
            ..case(
                "same_state_as_the_previous_execution",
                concat!(
                    include_str!("state_probe.py"),
                    r#"
import json
def main():
    before, now = json.loads(r"""{BEFORE}"""), probe()
    same = sorted(name for name in now if name in before and now[name] == before[name])
    missing = sorted(set(before) ^ set(now))
    if missing:
        return "different values: " + ", ".join(missing)
    return "same: " + ", ".join(same) if same else "fresh"
"#
                ),
                Returns("fresh"),
                Returns("fresh"),
            )
        },
        case(
            "reach_the_zygote",
            r#"
import gc, sys
def main():
    found = []
    frame = sys._getframe()
    while frame is not None:
        for name, value in list(frame.f_locals.items()):
            kind = type(value)
            if kind.__name__ in ("Zygote", "Child") or "socket" in kind.__name__:
                found.append(f"{frame.f_code.co_name}.{name}")
        frame = frame.f_back
    for value in gc.get_objects():
        kind = type(value)
        if kind.__name__ in ("Zygote", "Child") and kind.__module__ in ("__main__", "zygote"):
            found.append(f"a live {kind.__name__}")
        elif kind.__name__ == "socket" and kind.__module__ == "socket":
            found.append(f"a socket object (fd {value.fileno()})")
    return "found: " + ", ".join(sorted(set(found))) if found else "nothing of the zygote"
"#,
            Returns("nothing of the zygote"),
            Returns("nothing of the zygote"),
        ),
        Case {
            during: Some(Neighbour {
                script: r#"
import os
def main():
    print("ready")
    for _ in range(100):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return "forked"
"#,
                returns: "forked",
            }),
            ..case(
                "count_a_concurrent_execution_s_activity",
                r#"
import os, time
FILES = ["/proc/stat", "/proc/loadavg", "/proc/meminfo", "/proc/vmstat", "/proc/uptime"]
def read():
    seen = {}
    for path in FILES + [os.path.join("/proc/pressure", name) for name in ("cpu", "io", "memory")]:
        try:
            with open(path) as f:
                seen[path] = f.read()
        except OSError:
            pass
    return seen
def main():
    first = read()
    time.sleep(1.5)
    changed = sorted(path for path, text in read().items() if first.get(path) != text)
    print("changed:", ", ".join(changed))
    return "changed" if changed else "constant"
"#,
                Returns("constant"),
                Returns("changed"),
            )
        },
        case(
            "connect_to_loopback",
            r#"
import socket
def main():
    results = []
    for family, address in [(socket.AF_INET, ("127.0.0.1", {SERVICE_PORT})), (socket.AF_INET6, ("::1", {SERVICE_PORT})),
                            (socket.AF_INET, ("127.0.0.1", 22))]:
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(1)
            s.connect(address)
            results.append("connected")
        except PermissionError:
            results.append("denied")
        except OSError as e:
            results.append(type(e).__name__)
    return ", ".join(results)
"#,
            Returns("denied, denied, denied"),
            Returns("denied, denied, denied"),
        ),
        case(
            "connect_to_a_host_unix_socket",
            r#"
import socket
def main():
    results = []
    for address in ["\0{UNIX_SOCKET}", "/tmp/{UNIX_SOCKET}"]:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1)
            s.connect(address)
            results.append("connected")
        except PermissionError:
            results.append("denied")
        except OSError as e:
            results.append(type(e).__name__)
    return ", ".join(results)
"#,
            Returns("denied, denied"),
            Returns("denied, denied"),
        ),
        case(
            "raw_and_netlink_sockets",
            r#"
import socket
def main():
    results = []
    for args in [(socket.AF_PACKET, socket.SOCK_RAW, 0), (socket.AF_NETLINK, socket.SOCK_RAW, 0),
                 (socket.AF_INET, socket.SOCK_DGRAM, 0)]:
        try:
            socket.socket(*args)
            results.append("created")
        except PermissionError:
            results.append("denied")
    return ", ".join(results)
"#,
            Returns("denied, denied, denied"),
            Returns("denied, denied, denied"),
        ),
        case(
            "see_interfaces_and_routes",
            r#"
def main():
    interfaces = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:])
    devices = [line.split()[0] for line in open("/proc/net/route").read().splitlines()[1:]]
    devices += [line.split()[-1] for line in open("/proc/net/ipv6_route").read().splitlines()]
    if interfaces == ["lo"] and all(device == "lo" for device in devices):
        return "lo only, no routes"
    return "host interfaces and routes"
"#,
            Returns("lo only, no routes"),
            Returns("host interfaces and routes"),
        ),
        case(
            "capabilities",
            r#"
import ctypes
def main():
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    # Not every kernel's /proc shows it (gVisor's does not): the kernel is asked as well.
    status.setdefault("NoNewPrivs", str(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)))
    keys = ["NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "Seccomp"]
    return " ".join(f"{key}={status[key].strip()}" for key in keys)
"#,
            Returns(CONFINED),
            Returns(CONFINED),
        ),
        case(
            "become_root",
            r#"
import os
def main():
    for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0])):
        try:
            attempt()
            return "became root"
        except OSError:  # EPERM; EINVAL in a user namespace, where 0 is not even mapped
            pass
    return "denied" if os.getuid() != 0 else "denied, yet uid 0"
"#,
            Returns("denied"),
            Returns("denied"),
        ),
        case(
            "privileged_syscalls",
            r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
CALLS = [  # x86_64 numbers; arguments that would succeed (or fail otherwise) without seccomp
    ("mount", 165, (b"none", b"/tmp", b"tmpfs", 0, 0)), ("umount2", 166, (b"/tmp", 0)),
    ("pivot_root", 155, (b".", b".")), ("chroot", 161, (b"/",)), ("unshare", 272, (0x10000000,)),
    ("setns", 308, (0, 0)), ("ptrace", 101, (16, 1, 0, 0)), ("process_vm_readv", 310, (1, 0, 0, 0, 0, 0)),
    ("bpf", 321, (0, 0, 0)), ("perf_event_open", 298, (0, 0, -1, -1, 0)), ("userfaultfd", 323, (0,)),
    ("keyctl", 250, (0, -3, 0)), ("add_key", 248, (b"user", b"k", b"v", 1, -3)),
    ("kexec_load", 246, (0, 0, 0, 0)), ("init_module", 175, (0, 0, b"")), ("delete_module", 176, (b"x", 0)),
    ("io_uring_setup", 425, (1, 0)), ("setsid", 112, ()), ("setpgid", 109, (0, 0)), ("clone3", 435, (0, 0)),
]
def main():
    unexpected = []
    for name, number, args in CALLS:
        result = libc.syscall(number, *args)
        outcome = "OK" if result >= 0 else errno.errorcode[ctypes.get_errno()]
        if outcome != ("ENOSYS" if name == "clone3" else "EPERM"):
            unexpected.append(f"{name}={outcome}")
    return " ".join(unexpected) or f"all {len(CALLS) - 1} EPERM, clone3 ENOSYS"
"#,
            Returns("all 19 EPERM, clone3 ENOSYS"),
            Returns("all 19 EPERM, clone3 ENOSYS"),
        ),
        case(
            "sysv_ipc_and_message_queues",
            r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, O_CREAT, O_RDWR, KEY = 0o1000, 0o100, 0o2, {NONCE}
def main():
    calls = [("shmget", lambda: libc.shmget(KEY, 4096, IPC_CREAT | 0o666)),
             ("msgget", lambda: libc.msgget(KEY, IPC_CREAT | 0o666)),
             ("semget", lambda: libc.semget(KEY, 1, IPC_CREAT | 0o666)),
             ("mq_open", lambda: libc.mq_open(b"/pyexec-{NONCE}", O_CREAT | O_RDWR, 0o666, None))]
    outcomes = []
    for name, call in calls:
        made = call() >= 0
        outcomes.append(f"{name}=" + ("created" if made else errno.errorcode[ctypes.get_errno()]))
    return " ".join(outcomes)
"#,
            Returns("shmget=EPERM msgget=EPERM semget=EPERM mq_open=EPERM"),
            Returns("shmget=EPERM msgget=EPERM semget=EPERM mq_open=EPERM"),
        ),
        case(
            "kill_the_parent",
            r#"
import os, signal
def main():
    parent = os.getppid()
    if parent == 0:
        return "no parent visible"
    try:
        os.kill(parent, signal.SIGKILL)
        return "sent"
    except PermissionError:
        return "denied"
"#,
            Returns("no parent visible"),
            Returns("denied"),
        ),
        Case {
            during: Some(Neighbour {
                script: VICTIM,
                returns: "victim finished",
            }),
            ..case(
                "kill_every_process",
                r#"
import os, signal
def main():
    try:
        os.kill(-1, signal.SIGKILL)
        return "signal sent, nothing else harmed"
    except ProcessLookupError:
        return "no other process visible"
"#,
                Returns("no other process visible"),
                Returns("signal sent, nothing else harmed"),
            )
        },
        case(
            "outlive_the_execution",
            r#"
import os, time
def main():
    if os.fork() == 0:
        try:
            os.setsid()
        except OSError:
            pass
        if os.fork() == 0:
            time.sleep(60)
        os._exit(0)
    return "forked"
"#,
            Returns("forked"),
            Returns("forked"),
        ),
        case(
            "share_the_cpu_unfairly",
            r#"
import os
def main():
    # The scheduler shares the CPU between sessions first: a session of its own is what keeps
    # a hundred busy processes of one execution from starving another execution's one.
    return "its own session" if os.getsid(0) == os.getpid() else "the service's session"
"#,
            Returns("its own session"),
            Returns("its own session"),
        ),
        case(
            "crash_the_service_with_a_deep_tree",
            r#"
import os, tempfile
def main():
    # 25,000 levels crashed the service once (tests/hardening.rs runs that under the default
    # limits); this suite's 1 s of CPU leaves room for fewer on a busy disk.
    os.chdir(tempfile.gettempdir())
    for _ in range(4000):
        os.mkdir("d"); os.chdir("d")
    return "ok"
"#,
            Returns("ok"),
            Returns("ok"),
        ),
        Case {
            before: Some(
                r#"
import os, tempfile
def main():
    tops = []
    for d in [tempfile.gettempdir(), "/tmp"]:
        top = os.path.join(d, "pyexec-deep-{NONCE}")
        try:
            os.mkdir(top)
        except OSError:
            continue
        fd = os.open(top, os.O_RDONLY)
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
        os.close(os.open("marker", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        tops.append(top)
    return "|".join(tops)
"#,
            ),
            ..case(
                "deep_tree_for_the_next_execution",
                r#"
import os
def main():
    found = []
    for top in "{BEFORE}".split("|"):
        try:
            fd = os.open(top, os.O_RDONLY)
            for _ in range(1500):
                fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
                os.close(parent)
            os.close(os.open("marker", os.O_RDONLY, dir_fd=fd))
            found.append(top)
        except OSError:
            pass
    return "found: " + ", ".join(found) if found else "gone"
"#,
                Returns("gone"),
                Returns("gone"),
            )
        },
        case(
            "fill_shared_memory",
            r#"
import os
def main():
    if not os.path.isdir("/dev/shm"):
        return "no /dev/shm"
    for i in range(12):
        with open(f"/dev/shm/pyexec-fill-{NONCE}-{i}", "wb") as f:
            for _ in range(30):
                f.write(b"x" * (1 << 20))
    return "held 360 MiB in /dev/shm"
"#,
            Returns("no /dev/shm"),
            Fails("memory_limit_exceeded", "memory limit"),
        ),
        case(
            "grow_socket_buffers",
            r#"
import socket
def main():
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        return "grown"
    except PermissionError:
        return "denied"
"#,
            Returns("denied"),
            Returns("denied"),
        ),
        case(
            "fill_socket_buffers",
            r#"
import os, socket, time
def main():
    # Sixteen processes each park what their descriptors allow in socket buffers: kernel
    # memory that no address-space limit sees.
    report_r, report_w = os.pipe()
    for _ in range(16):
        if os.fork() == 0:
            held = []
            try:
                while True:
                    a, b = socket.socketpair()
                    a.setblocking(False)
                    try:
                        while True:
                            a.send(b"x" * 65536)
                    except BlockingIOError:
                        pass
                    held.append((a, b))
            except OSError:
                pass
            os.write(report_w, b"f")
            time.sleep(60)
            os._exit(0)
    full = 0
    while full < 16:
        full += len(os.read(report_r, 16))
    return "held"
"#,
            Fails("memory_limit_exceeded", "memory limit"),
            Fails("memory_limit_exceeded", "memory limit"),
        ),
        case(
            "limits_leave_room_for_numpy_and_pandas",
            r#"
import numpy as np, pandas as pd
def main():
    frame = pd.DataFrame({"a": np.arange(1_000_000)})
    return "computed " + str(int(frame["a"].sum()))
"#,
            Returns("computed 499999500000"),
            Returns("computed 499999500000"),
        ),
        case(
            "fork_bomb",
            "import os\ndef main():\n    while True:\n        os.fork()\n",
            Fails("script_exception", "processes and threads"),
            Fails("script_exception", "processes and threads"),
        ),
        case(
            "thread_bomb",
            "import threading, time\ndef main():\n    while True:\n        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
            Fails("script_exception", "processes and threads"),
            Fails("script_exception", "processes and threads"),
        ),
        case(
            "memory_bomb",
            r#"
def main():
    hog = b"x" * (1 << 30)
    return len(hog)
"#,
            Fails("memory_limit_exceeded", "memory limit"),
            Fails("memory_limit_exceeded", "memory limit"),
        ),
        case(
            "open_files",
            "def main():\n    files = []\n    while True:\n        files.append(open('/dev/null'))\n",
            Fails("script_exception", "open files"),
            Fails("script_exception", "open files"),
        ),
        case(
            "fill_tmp",
            r#"
import errno, os, tempfile
def main():
    try:
        with open(os.path.join(tempfile.gettempdir(), "fill"), "wb") as f:
            while True:
                f.write(b"x" * (1 << 20))
    except OSError as e:
        return errno.errorcode[e.errno]
"#,
            Returns("ENOSPC"),
            Returns("EFBIG"),
        ),
        case(
            "infinite_loop",
            "import time\ndef main():\n    while True:\n        time.sleep(0.01)\n",
            Fails("time_limit_exceeded", "time limit"),
            Fails("time_limit_exceeded", "time limit"),
        ),
        case(
            "burn_cpu",
            "def main():\n    while True:\n        pass\n",
            Fails("cpu_limit_exceeded", "CPU time limit"),
            Fails("cpu_limit_exceeded", "CPU time limit"),
        ),
        case(
            "huge_stdout",
            "import sys\ndef main():\n    chunk = 'x' * 65536\n    for _ in range(1600):\n        sys.stdout.write(chunk)\n    return 'done'\n",
            Truncated,
            Truncated,
        ),
        case(
            "huge_result",
            "def main():\n    return 'x' * 20_000_000\n",
            Fails("result_too_large", "limit is 1048576 bytes"),
            Fails("result_too_large", "limit is 1048576 bytes"),
        ),
        case(
            "result_of_hundreds_of_mb",
            "def main():\n    return 'x' * 300_000_000\n",
            Fails("memory_limit_exceeded", "memory limit"),
            Fails("memory_limit_exceeded", "memory limit"),
        ),
        case(
            "ctypes_segfault",
            "import ctypes\ndef main():\n    ctypes.string_at(0)\n",
            Fails("script_crashed", "SIGSEGV"),
            Fails("script_crashed", "SIGSEGV"),
        ),
        case(
            "exit_137",
            "import os\ndef main():\n    os._exit(137)\n",
            Fails("script_exited", "status 137"),
            Fails("script_exited", "status 137"),
        ),
        case(
            "exit_255",
            "import os\ndef main():\n    os._exit(255)\n",
            Fails("script_exited", "status 255"),
            Fails("script_exited", "status 255"),
        ),
    ]
}

/// What the scripts' placeholders stand for in one service.
#[derive(Debug, Clone)]
pub struct Placeholders {
    /// The service's pid as the script would see it (the same pid namespace as the service).
    pub service_pid: u32,
    pub service_port: u16,
    /// A number of this service alone, so concurrent suites never meet (its first slot uid).
    pub nonce: u32,
    /// The name of the host Unix sockets a script must not reach.
    pub unix_socket: String,
    /// How long a neighbour stays in place after it has said `ready`, in seconds: the attack
    /// starts once the runner has read that line and must be done by then, and the neighbour
    /// must end within the service's time limit.
    pub hold_secs: f64,
}

/// The script with its placeholders filled in; `before` is the result of the case's `before`
/// script (empty when it has none).
pub fn fill(script: &str, values: &Placeholders, before: &str) -> String {
    script
        .replace("{SERVICE_PID}", &values.service_pid.to_string())
        .replace("{SERVICE_PORT}", &values.service_port.to_string())
        .replace("{NONCE}", &values.nonce.to_string())
        .replace("{UID_BASE}", &values.nonce.to_string())
        .replace("{UNIX_SOCKET}", &values.unix_socket)
        .replace("{BEFORE}", before)
        .replace("{HOLD}", &values.hold_secs.to_string())
}

/// Checks one answer against an expectation; the mismatch, if any.
pub fn mismatch(expect: Expect, status: u16, body: &Value) -> Option<String> {
    let ok = match expect {
        Returns(value) => status == 200 && body["result"] == value,
        Fails(code, mention) => {
            status == 400
                && error_code(body) == code
                && body["error"].as_str().unwrap().contains(mention)
        }
        Truncated => status == 200 && body["stdout_truncated"] == true,
    };
    let shown = body.to_string().chars().take(600).collect::<String>();
    (!ok).then(|| format!("expected {expect}, got {status} {shown}"))
}
