"""pyexec's harness: runs one user script inside the jail and reports what main() did.

Invoked as `python -I -u -X utf8 -B harness.py SETTINGS SCRIPT_PATH`, where SETTINGS is a
JSON object from the service: {"result_fd": 3, "result_bytes": N, "rlimits": {NAME: N},
"limits": {NAME: N}} (see src/sandbox/command.rs).

Before any user code runs it lowers its own rlimits (address space where no cgroup bounds
memory, processes, CPU time, file size, open files): a process may always lower its own,
even where nsjail may not set them (Cloud Run's first generation).

The report travels on its own file descriptor (RESULT_FD, passed in by nsjail), never on
stdout or stderr, so nothing the script prints can corrupt or fake it. It is a sequence of
newline-terminated JSON frames, each carrying "v" (the protocol version):
  {"v": 1, "event": "started"}                  before any user code runs
  {"v": 1, "event": "returned", "result": ...}   main() returned a JSON-encodable value
  {"v": 1, "event": "failed", "kind": ..., ...}  the script failed, see src/harness/mod.rs

stdout and stderr are the process's own descriptors, so output from C extensions and
subprocesses is captured too; the service reads them. This file is embedded in the service
binary (include_str!) so harness and service can never drift apart.
"""

import errno
import faulthandler
import inspect
import json
import math
import os
import resource
import signal
import sys
import traceback
import types

PROTOCOL_VERSION = 1
SCRIPT_MODULE = "script"
SCRIPT_FILENAME = "main.py"


class Reporter:
    """Writes frames on the result descriptor, which user code does not inherit."""

    def __init__(self, fd):
        os.set_inheritable(fd, False)
        self._file = open(fd, "wb", closefd=False)

    def send(self, frame):
        frame["v"] = PROTOCOL_VERSION
        self._write(json.dumps(frame, allow_nan=False).encode("ascii") + b"\n")

    def send_result(self, encoded):
        """Splices the already-encoded result in verbatim: no second encoding pass."""
        head = b'{"v": %d, "event": "returned", "result": ' % PROTOCOL_VERSION
        self._write(head + encoded.encode("ascii") + b"}\n")

    def _write(self, data):
        self._file.write(data)
        self._file.flush()


HARNESS_PID = os.getpid()


def finish(send, frame):
    """Sends the final frame and leaves at once: atexit hooks and non-daemon threads the
    script left behind must not hold the execution open after main() has answered.
    A process the script forked runs this code too; only the harness itself reports."""
    if os.getpid() != HARNESS_PID:
        os._exit(0)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    send(frame)
    os._exit(0)


def user_traceback(exc):
    """The traceback without the harness's own frames: the caller debugs their script."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def type_name(value):
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


LIMIT_ERRNOS = {
    errno.EFBIG: ("file_bytes", "the file size limit of {} bytes was reached"),
    errno.ENOSPC: ("tmp_bytes", "the disk is full: the /tmp size limit is {} bytes"),
    errno.EMFILE: ("open_files", "the limit of {} open files was reached"),
    errno.EAGAIN: ("processes", "the limit of {} processes and threads was reached"),
}


def limit_hint(exc, limits):
    """Names the limit behind an error, so the caller knows which one they hit."""
    if isinstance(exc, OSError) and exc.errno in LIMIT_ERRNOS:
        name, text = LIMIT_ERRNOS[exc.errno]
        return text.format(limits.get(name, "?"))
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return LIMIT_ERRNOS[errno.EAGAIN][1].format(limits.get("processes", "?"))
    return None


def exception_frame(exc, phase, limits):
    if isinstance(exc, MemoryError):
        return {"event": "failed", "kind": "memory"}
    return {
        "event": "failed",
        "kind": "exception",
        "phase": phase,
        "type": type_name(exc),
        "message": str(exc),
        "traceback": user_traceback(exc),
        "hint": limit_hint(exc, limits),
    }


def exit_frame(exc):
    code = exc.code
    if code is not None and not isinstance(code, int):
        code = str(code)
    return {"event": "failed", "kind": "exit", "code": code}


def find_unencodable(value, path="result", parents=()):
    """Names the first part of `value` that JSON cannot carry, as (path, description)."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"the float {value!r}")
    if isinstance(value, (dict, list, tuple)):
        if id(value) in parents:
            return path, "the container itself (a circular reference)"
        if len(parents) > 200:
            return path, "nested too deeply"
        parents = parents + (id(value),)
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                return f"{path} key {key!r}", f"a {type_name(key)} (keys must be str, int, float, bool or None)"
            found = find_unencodable(item, f"{path}[{key!r}]", parents)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_unencodable(item, f"{path}[{index}]", parents)
            if found:
                return found
        return None
    return path, f"a {type_name(value)}"


def not_serializable_frame(value, error):
    found = None
    try:
        found = find_unencodable(value)
    except Exception:
        pass
    if isinstance(error, RecursionError):
        detail = "it is nested too deeply to encode"
        bad_type = type_name(value)
    elif found is None:
        detail = str(error)
        bad_type = type_name(value)
    else:
        path, what = found
        detail = f"{path} is {what}"
        bad_type = type_name(value) if what.startswith("the container") else what.removeprefix("a ").removeprefix("the ").split(" ")[0]
    hint = ""
    if "nan" in detail or "inf" in detail:
        hint = "; NaN and Infinity are not valid JSON"
    elif "numpy" in detail or "pandas" in detail:
        hint = "; convert it first, e.g. with .tolist() or .to_dict()"
    return {
        "event": "failed",
        "kind": "not_serializable",
        "type": bad_type,
        "message": f"main() returned a value that is not JSON-serializable: {detail}{hint}",
    }


def required_parameters(function):
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [
        name
        for name, parameter in signature.parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def apply_rlimits(rlimits):
    """Lowers each limit to (soft, hard); never tries to raise a hard limit already lower."""
    for name, value in rlimits.items():
        soft, hard = value if isinstance(value, list) else (value, value)
        which = getattr(resource, "RLIMIT_" + name)
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        resource.setrlimit(which, (min(soft, hard), hard))


def main():
    settings, script_path = json.loads(sys.argv[1]), sys.argv[2]
    max_result_bytes, limits = settings["result_bytes"], settings["limits"]
    reporter = Reporter(settings["result_fd"])
    faulthandler.enable(file=sys.stderr)
    apply_rlimits(settings["rlimits"])
    # Reported by the harness rather than left to the default action: in a pid namespace the
    # interpreter is process 1, which ignores signals it has no handler for.
    signal.signal(signal.SIGXCPU, lambda *_: finish(reporter.send, {"event": "failed", "kind": "cpu"}))
    # Files the script creates are private to its uid unless it says otherwise.
    os.umask(0o077)
    reporter.send({"event": "started"})

    with open(script_path, "rb") as file:
        source = file.read()
    try:
        code = compile(source, SCRIPT_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        finish(reporter.send, {
            "event": "failed",
            "kind": "syntax_error",
            "type": type_name(exc),
            "message": getattr(exc, "msg", None) or str(exc),
            "line": line,
            "column": getattr(exc, "offset", None),
            "text": (getattr(exc, "text", None) or "").rstrip("\n") or None,
        })

    module = types.ModuleType(SCRIPT_MODULE)
    module.__file__ = SCRIPT_FILENAME
    sys.modules[SCRIPT_MODULE] = module
    sys.argv = [SCRIPT_FILENAME]
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        finish(reporter.send, exit_frame(exc))
    except BaseException as exc:
        finish(reporter.send, exception_frame(exc, "load", limits))

    function = module.__dict__.get("main")
    if function is None:
        finish(reporter.send, {
            "event": "failed",
            "kind": "no_main",
            "message": "the script does not define a top-level function main()",
        })
    if not callable(function):
        finish(reporter.send, {
            "event": "failed",
            "kind": "no_main",
            "message": f"main is not a function (it is of type {type_name(function)}): define def main(): ...",
        })
    required = required_parameters(function)
    if required:
        finish(reporter.send, {
            "event": "failed",
            "kind": "main_requires_arguments",
            "message": "main() must take no arguments, but it requires: " + ", ".join(required),
        })

    try:
        if inspect.iscoroutinefunction(function):
            import asyncio

            value = asyncio.run(function())
        else:
            value = function()
    except SystemExit as exc:
        finish(reporter.send, exit_frame(exc))
    except BaseException as exc:
        finish(reporter.send, exception_frame(exc, "main", limits))

    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        finish(reporter.send, not_serializable_frame(value, exc))
    except MemoryError:
        finish(reporter.send, {"event": "failed", "kind": "memory"})
    if len(encoded) > max_result_bytes:
        finish(reporter.send, {
            "event": "failed",
            "kind": "result_too_large",
            "bytes": len(encoded),
            "limit": max_result_bytes,
        })
    finish(reporter.send_result, encoded)


main()
