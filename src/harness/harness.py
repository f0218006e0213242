"""pyexec's harness: runs one user script inside the jail and reports what main() did.

Cold, it is invoked as `python -I -u -X utf8 -B harness.py SETTINGS SCRIPT_PATH`, where
SETTINGS is a JSON object from the service: {"result_fd": 3, "seccomp": [HEX, ...],
"rlimits": {NAME: N}, "limits": {NAME: N}} (see src/sandbox/command.rs); "limits" are the
values failures report. Warm, the zygote (zygote.py) imports it once and calls enter() and
run() in each child it forks.

Before any user code runs it lowers its own rlimits (address space where no cgroup bounds
memory, processes, CPU time, file size, open files): a process may always lower its own,
even where nsjail may not set them (Cloud Run's first generation). Then it sets
no_new_privs and installs the service's seccomp filters (compiled in src/sandbox/seccomp.rs),
and only then says "started": no filter, no script.

Only what the success path needs is imported up front (each import is paid by every cold
execution), and what a failure needs even when the script used up its descriptors or memory
(traceback); the rarest paths (inspect for a main that is not a plain function, asyncio)
import theirs when they happen.

The report travels on its own file descriptor (RESULT_FD, passed in by nsjail), never on
stdout or stderr, so nothing the script prints can corrupt or fake it. It is a sequence of
newline-terminated JSON frames, each carrying "v" (the protocol version):
  {"v": 2, "event": "started"}                          before any user code runs
  {"v": 2, "event": "returned", "result": ...}           main() returned a JSON-encodable value
  {"v": 2, "event": "failed", "failure": {"code": ...}}  the script failed
A failure is the service's `ScriptFailure` (src/failure.rs) as JSON: facts only (types,
paths, numbers), never sentences; the service words them. The golden frames in golden/ are
checked against both sides (test_harness.py here, src/harness/mod.rs there).

stdout and stderr are the process's own descriptors, so output from C extensions and
subprocesses is captured too; the service reads them. This file is embedded in the service
binary (include_str!) so harness and service can never drift apart.
"""

import errno
import faulthandler
import json
import math
import os
import resource
import signal
import sys
import traceback
import types

PROTOCOL_VERSION = 2
SCRIPT_MODULE = "script"
SCRIPT_FILENAME = "main.py"
# Bounds on the words taken from the script's own objects, so a hostile value cannot make a
# frame huge: a dict key's repr in a path, a type's name, an exception's message and traceback
# (those two say when they were cut), any other text. In characters; a frame stays well under
# the service's allowance for it (src/sandbox/mod.rs FRAME_OVERHEAD) even at six bytes each.
MAX_KEY_REPR = 80
MAX_TYPE_NAME = 200
MAX_MESSAGE = 16 * 1024
MAX_TRACEBACK = 64 * 1024
MAX_TEXT = 4 * 1024


class Reporter:
    """Writes frames on the result descriptor, which user code does not inherit."""

    def __init__(self, fd):
        os.set_inheritable(fd, False)
        self._file = open(fd, "wb", closefd=False)

    def send(self, frame):
        frame["v"] = PROTOCOL_VERSION
        self._write(utf8(json.dumps(frame, allow_nan=False, ensure_ascii=False)) + b"\n")

    def send_result(self, encoded):
        """Splices the already-encoded result in verbatim: no second encoding pass."""
        head = b'{"v": %d, "event": "returned", "result": ' % PROTOCOL_VERSION
        self._write(head + encoded + b"}\n")

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


SURROGATES = dict.fromkeys(range(0xD800, 0xE000), 0xFFFD)


def utf8(text):
    """`text` as UTF-8. A lone surrogate (a str made from undecodable bytes, as os.fsdecode
    makes) has no UTF-8 form, so it becomes U+FFFD, as undecodable output does."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.translate(SURROGATES).encode("utf-8")


def capped(text, limit):
    """The first `limit` characters of `text`, and whether that cut anything."""
    return (text, False) if len(text) <= limit else (text[:limit], True)


def failed(code, **facts):
    """The final frame for a failure: `code` and its facts, as `ScriptFailure` reads them."""
    return {"event": "failed", "failure": {"code": code, **facts}}


def user_traceback(exc):
    """The traceback without the harness's own frames: the caller debugs their script."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def type_name(value):
    cls = type(value)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None)
    if not isinstance(name, str):
        name = "<unnamed type>"
    if isinstance(module, str) and module != "builtins":
        name = f"{module}.{name}"
    return name[:MAX_TYPE_NAME]


def safe_str(exc):
    """str(exc), which is the script's code and may raise or return a non-str."""
    try:
        text = str(exc)
    except BaseException:
        return "<str() of the exception failed>"
    return text if type(text) is str else "<str() of the exception returned a non-str>"


# errno values that mean a sandbox limit was reached, with the limit's name.
LIMIT_ERRNOS = {
    errno.EFBIG: "file_bytes",
    errno.ENOSPC: "tmp_bytes",
    errno.EMFILE: "open_files",
    errno.EAGAIN: "processes",
}


def reached_limit(exc, limits):
    """The limit behind an exception, from its errno (or CPython's thread-start failure)."""
    name = None
    if isinstance(exc, OSError) and exc.errno in LIMIT_ERRNOS:
        name = LIMIT_ERRNOS[exc.errno]
    elif isinstance(exc, RuntimeError) and exc.args == ("can't start new thread",):
        name = "processes"
    if name is None or name not in limits:
        return None
    return {"name": name, "value": limits[name]}


def exception_frame(exc, phase, limits):
    if isinstance(exc, MemoryError):
        return failed("memory_limit_exceeded", memory_limit_bytes=limits["memory_bytes"])
    message, message_truncated = capped(safe_str(exc), MAX_MESSAGE)
    traceback_text, traceback_truncated = capped(user_traceback(exc), MAX_TRACEBACK)
    return failed(
        "script_exception",
        phase=phase,
        exception={
            "type": type_name(exc),
            "message": message,
            "message_truncated": message_truncated,
            "traceback": traceback_text,
            "traceback_truncated": traceback_truncated,
            "limit": reached_limit(exc, limits),
        },
    )


def exit_frame(exc):
    code = exc.code
    if isinstance(code, bool):
        code = int(code)
    elif code is not None and not isinstance(code, int):
        code = capped(safe_str(code), MAX_TEXT)[0]
    return failed("script_exited", exit_code=code, via="sys_exit")


def key_repr(key):
    text = repr(key)
    return text if len(text) <= MAX_KEY_REPR else text[: MAX_KEY_REPR - 3] + "..."


def find_unencodable(value, path="result", parents=()):
    """The first part of `value` JSON cannot carry, as (path, problem, type name), else None.
    The problem is judged from the value itself (a float's own NaN-ness), never from words."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return path, "nan", type_name(value)
        if math.isinf(value):
            return path, "infinity" if value > 0 else "negative_infinity", type_name(value)
        return None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in parents:
            return path, "circular", type_name(value)
        if len(parents) > 200:
            return path, "too_deep", type_name(value)
        parents = parents + (id(value),)
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                return path, "key", type_name(key)
            found = find_unencodable(item, f"{path}[{key_repr(key)}]", parents)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_unencodable(item, f"{path}[{index}]", parents)
            if found:
                return found
        return None
    return path, "type", type_name(value)


def not_serializable_frame(value, error):
    found = None
    if isinstance(error, RecursionError):
        found = ("result", "too_deep", type_name(value))
    else:
        try:
            found = find_unencodable(value)
        except BaseException:
            pass
    # json refused something the search does not know (a container subclass that misbehaves):
    # the value itself is what cannot be carried.
    path, problem, bad_type = found or ("result", "type", type_name(value))
    return failed("result_not_serializable", type=bad_type, path=path, problem=problem)


CO_COROUTINE = 0x80


def is_plain_function(function):
    """A function whose own code object says what it takes: no wrapper, no partial."""
    return isinstance(function, types.FunctionType) and not hasattr(function, "__wrapped__")


def required_parameters(function):
    """The parameters main() cannot be called without. Read from the code object for a plain
    function (importing inspect costs every execution ~12 ms); inspect for anything else."""
    if is_plain_function(function):
        code = function.__code__
        positional = code.co_varnames[: code.co_argcount]
        defaults = len(function.__defaults__ or ())
        keyword = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
        given = function.__kwdefaults__ or {}
        return list(positional[: len(positional) - defaults]) + [k for k in keyword if k not in given]
    import inspect

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


def is_coroutine_function(function):
    if is_plain_function(function):
        return bool(function.__code__.co_flags & CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(function)


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


def enter(settings, filters):
    """Makes this process a harness for one script: its report channel, its limits, its
    filters. Returns the reporter once it has said "started"; no user code ran before."""
    global HARNESS_PID
    HARNESS_PID = os.getpid()
    limits = settings["limits"]
    reporter = Reporter(settings["result_fd"])
    faulthandler.enable(file=sys.stderr)
    apply_rlimits(settings["rlimits"])
    # Reported by the harness rather than left to the default action: in a pid namespace the
    # interpreter is process 1, which ignores signals it has no handler for.
    cpu_exceeded = failed("cpu_limit_exceeded", cpu_limit_secs=limits["cpu_secs"])
    signal.signal(signal.SIGXCPU, lambda *_: finish(reporter.send, cpu_exceeded))
    # Files the script creates are private to its uid unless it says otherwise.
    os.umask(0o077)
    filters.install()
    reporter.send({"event": "started"})
    return reporter


def run(reporter, limits, source):
    """Compiles, loads and calls the script's main(), and reports; never returns."""
    try:
        code = compile(source, SCRIPT_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        text = (getattr(exc, "text", None) or "").rstrip("\n")
        finish(reporter.send, failed(
            "syntax_error",
            message=capped(getattr(exc, "msg", None) or str(exc), MAX_TEXT)[0],
            line=getattr(exc, "lineno", None),
            column=getattr(exc, "offset", None),
            text=capped(text, MAX_TEXT)[0] or None,
        ))

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
        finish(reporter.send, failed("no_main", main_type=None))
    if not callable(function):
        finish(reporter.send, failed("no_main", main_type=type_name(function)))
    required = required_parameters(function)
    if required:
        finish(reporter.send, failed("main_requires_arguments", parameters=required))

    try:
        if is_coroutine_function(function):
            import asyncio

            value = asyncio.run(function())
        else:
            value = function()
    except SystemExit as exc:
        finish(reporter.send, exit_frame(exc))
    except BaseException as exc:
        finish(reporter.send, exception_frame(exc, "main", limits))

    try:
        encoded = utf8(json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError) as exc:
        finish(reporter.send, not_serializable_frame(value, exc))
    except MemoryError:
        finish(reporter.send, failed("memory_limit_exceeded", memory_limit_bytes=limits["memory_bytes"]))
    if len(encoded) > limits["result_bytes"]:
        finish(reporter.send, failed(
            "result_too_large", result_bytes=len(encoded), limit_bytes=limits["result_bytes"]
        ))
    finish(reporter.send_result, encoded)


def main():
    settings, script_path = json.loads(sys.argv[1]), sys.argv[2]
    reporter = enter(settings, Filters(settings["seccomp"]))
    with open(script_path, "rb") as file:
        source = file.read()
    run(reporter, settings["limits"], source)


if __name__ == "__main__":
    main()
