"""F0, the floor a warm execution is made of, for `make bench`: from a process holding the
zygote's modules (numpy and pandas imported), as root, `fork()`, then in the child
`unshare(mount, IPC, UTS, net)` and `_exit(0)`, and `waitpid` in the parent; nothing else.

Prints one JSON line: the median wall time of one round, the CPU the process and its children
were charged per round (`getrusage`), and the whole machine's busy CPU per round from
`/proc/stat` (that includes the kernel's deferred work no process is charged for, such as
tearing down each network namespace).
"""

import ctypes
import json
import os
import resource
import sys
import time

import numpy  # noqa: F401  (held, as the zygote holds them: the fork copies their page tables)
import pandas  # noqa: F401

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x40000000
FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET
LIBC = ctypes.CDLL(None, use_errno=True)
TICKS = os.sysconf("SC_CLK_TCK")


def busy_ticks():
    fields = [int(field) for field in open("/proc/stat").readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def charged_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one_round():
    pid = os.fork()
    if pid == 0:
        os._exit(0 if LIBC.unshare(FLAGS) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"unshare failed in the child (status {status})")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    for _ in range(20):
        one_round()
    time.sleep(0.5)  # let the warm-up's namespaces be torn down first
    walls = []
    charged, busy, begun = charged_seconds(), busy_ticks(), time.perf_counter()
    for _ in range(rounds):
        started = time.perf_counter()
        one_round()
        walls.append(time.perf_counter() - started)
    time.sleep(0.5)  # ... and this run's, so they are counted
    charged, busy = charged_seconds() - charged, busy_ticks() - busy
    walls.sort()
    print(json.dumps({
        "rounds": rounds,
        "wall_p50_ms": walls[len(walls) // 2] * 1000,
        "cpu_ms": charged / rounds * 1000,
        # The 0.5 s pause is idle but for others' work on a shared machine: an upper bound.
        "busy_cpu_ms": busy / TICKS / rounds * 1000,
    }))


if __name__ == "__main__":
    main()
