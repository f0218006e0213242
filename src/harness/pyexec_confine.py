"""What makes a process a confined harness before any user code: its rlimits, its seccomp
filters, and the check of what the kernel reports (see harness.py; zygote.py uses it too).
Part of the harness, installed beside it."""

import os
import resource

def apply_rlimits(rlimits):
    """Lowers each limit to (soft, hard); never tries to raise a hard limit already lower."""
    for name, value in rlimits.items():
        soft, hard = value if isinstance(value, list) else (value, value)
        which = getattr(resource, "RLIMIT_" + name)
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        resource.setrlimit(which, (min(soft, hard), hard))


class Filters:
    """The service's seccomp filters, made ready once (the zygote does it before forking) and
    installed by install(), after no_new_privs. Failing to install one raises: the caller
    must not run the script then."""

    PR_SET_NO_NEW_PRIVS = 38
    PR_GET_NO_NEW_PRIVS = 39
    PR_SET_SECCOMP = 22
    SECCOMP_MODE_FILTER = 2

    def __init__(self, programs):
        import ctypes

        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self._ctypes = ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._buffers = [ctypes.create_string_buffer(bytes.fromhex(text)) for text in programs]
        self._programs = [
            Program(len(text) // 16, ctypes.addressof(buffer))
            for text, buffer in zip(programs, self._buffers)
        ]

    def _prctl(self, option, argument, pointer=None):
        ctypes = self._ctypes
        zero = ctypes.c_ulong(0)
        second = ctypes.byref(pointer) if pointer is not None else zero
        if self._libc.prctl(option, ctypes.c_ulong(argument), second, zero, zero) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl({option}): {os.strerror(error)}")

    def install(self):
        self._prctl(self.PR_SET_NO_NEW_PRIVS, 1)
        for program in self._programs:
            self._prctl(self.PR_SET_SECCOMP, self.SECCOMP_MODE_FILTER, program)

    def confirm_no_new_privs(self):
        """Asks the kernel, since not every kernel's /proc shows it (gVisor's does not)."""
        ctypes = self._ctypes
        zero = ctypes.c_ulong(0)
        if self._libc.prctl(self.PR_GET_NO_NEW_PRIVS, zero, zero, zero, zero) != 1:
            raise PermissionError("the jail is not confined: no_new_privs is not set")


CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def confirm_confined(status_text):
    """Raises unless the process described by `status_text` (its /proc/self/status) is what
    every jail promises before user code: one unprivileged uid and gid in all four slots, no
    supplementary group, no capability in any set, a seccomp filter. Checked from what the
    kernel reports, not from the calls that should have made it so: a kernel that refuses one
    (gVisor has no ambient set, no NoNewPrivs line) must not leave a gap unnoticed. A set the
    kernel does not report does not exist there."""
    fields = {}
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    problems = []
    for name in ("Uid", "Gid"):
        ids = set(fields.get(name, ()))
        if len(ids) != 1 or "0" in ids:
            problems.append(f"{name} {' '.join(fields.get(name, ())) or 'unknown'}")
    if fields.get("Groups"):
        problems.append("supplementary groups " + " ".join(fields["Groups"]))
    for name in CAPABILITY_SETS:
        value = fields.get(name)
        if value is not None and int(value[0], 16) != 0:
            problems.append(f"{name} {value[0]}")
    if fields.get("Seccomp") != ["2"]:
        problems.append(f"Seccomp {' '.join(fields.get('Seccomp', ())) or 'unknown'}")
    if fields.get("NoNewPrivs", ["1"]) != ["1"]:
        problems.append(f"NoNewPrivs {fields['NoNewPrivs'][0]}")
    if problems:
        raise PermissionError("the jail is not confined: " + ", ".join(problems))
