"""pyexec's harness: runs one user script inside the jail and reports what main() did.

Cold, it is invoked as `python -I -u -X utf8 -B harness.py SETTINGS JOB_PATH`, where
SETTINGS is a JSON object from the service: {"result_fd": 3, "seccomp": [HEX, ...],
"rlimits": {NAME: N}, "limits": {NAME: N}} (see src/sandbox/command.rs); "limits" are the
values failures report and the caps on returned files. The job (src/job.rs) is
{"script": ..., "input"?: ..., "files"?: [...], "return_files"?: true | [PATTERN, ...],
"strict_result"?: true}. Warm, the zygote (zygote.py) imports it once and calls enter() and
run() in each child it forks, with the job from its memfd.

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
  {"v": 2, "event": "returned", "result": ...}           main() returned a value JSON carries
                                                         (after the mapping), with "nulls" and
                                                         the files when there are any
  {"v": 2, "event": "failed", "failure": {"code": ...}}  the script failed
A failure is the service's `ScriptFailure` (src/failure.rs) as JSON: facts only (types,
paths, numbers), never sentences; the service words them. The golden frames in golden/ are
checked against both sides (test_harness.py here, src/harness/mod.rs there).

stdout and stderr are the process's own descriptors, so output from C extensions and
subprocesses is captured too; the service reads them. The script writes them a line at a time
(`line_buffered`), as on a terminal. This file is embedded in the service
binary (include_str!) so harness and service can never drift apart.
"""

import errno
import faulthandler
import io
import json
import linecache
import os
import signal
import sys
import traceback
import types

# The harness's own modules, installed beside it (read-only, root's): -I keeps the script's
# directory off sys.path, so it is put there by hand.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyexec_confine import Filters, apply_rlimits, confirm_confined  # noqa: E402
from pyexec_files import FileCollector, make_workdir  # noqa: E402
from pyexec_mapping import (  # noqa: E402
    SURROGATES, ResultEncoder, Unencodable, dumps, find_unencodable, type_name,
)

PROTOCOL_VERSION = 2
SCRIPT_MODULE = "script"
SCRIPT_FILENAME = "main.py"
# Bounds on the words taken from the script's own objects, so a hostile value cannot make a
# frame huge: a dict key's repr in a path, a type's name, an exception's message and traceback
# (those two say when they were cut), any other text. In characters; a frame stays well under
# the service's allowance for it (src/sandbox/mod.rs FRAME_OVERHEAD) even at six bytes each.
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

    def send_result(self, encoded, extra):
        """Splices the already-encoded result in verbatim: no second encoding pass. `extra`
        holds the frame's other fields: where the mapping made values null, the files."""
        head = b'{"v": %d, "event": "returned", ' % PROTOCOL_VERSION
        for name, value in extra.items():
            head += b'"%s": %s, ' % (name.encode(), utf8(json.dumps(value, ensure_ascii=False)))
        self._write(head + b'"result": ' + encoded + b"}\n")

    def _write(self, data):
        self._file.write(data)
        self._file.flush()


HARNESS_PID = os.getpid()


def finish(send, frame):
    """Sends the final frame and leaves at once: atexit hooks and non-daemon threads the
    script left behind must not hold the execution open after main() has answered.
    A process the script forked runs this code too; only the harness itself reports."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if os.getpid() != HARNESS_PID:
        os._exit(0)
    send(frame)
    os._exit(0)




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


def required_parameters(function, given=0):
    """The parameters main() cannot be called without when `given` positional arguments are
    passed. Read from the code object for a plain function (importing inspect costs every
    execution ~12 ms); inspect for anything else."""
    if is_plain_function(function):
        code = function.__code__
        positional = code.co_varnames[: code.co_argcount]
        defaults = len(function.__defaults__ or ())
        keyword = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
        given_keywords = function.__kwdefaults__ or {}
        return list(positional[given : len(positional) - defaults]) + [k for k in keyword if k not in given_keywords]
    import inspect

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    required = []
    for parameter in signature.parameters.values():
        positional = parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if positional and given > 0:
            given -= 1
            continue
        if parameter.default is inspect.Parameter.empty and parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD
        ):
            required.append(parameter.name)
    return required


CO_VARARGS = 0x04


def takes_a_positional(function):
    """Whether main() can be called with one positional argument (the input)."""
    if is_plain_function(function):
        code = function.__code__
        return code.co_argcount > 0 or bool(code.co_flags & CO_VARARGS)
    import inspect

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return any(parameter.kind in kinds for parameter in signature.parameters.values())


def is_coroutine_function(function):
    if is_plain_function(function):
        return bool(function.__code__.co_flags & CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(function)


def document(doc, required, optional=()):
    """`doc`, if it is an object with exactly the `required` keys and some of the `optional`
    ones: the service's documents are typed on its side (src/sandbox/documents.rs) and their
    golden copies checked on both, so anything else is a mismatch to fail loudly on."""
    if not isinstance(doc, dict):
        raise ValueError(f"expected an object, got {type(doc).__name__}")
    missing, unknown = set(required) - set(doc), set(doc) - set(required) - set(optional)
    if missing or unknown:
        raise ValueError(f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    return doc


LIMIT_KEYS = ("result_bytes", "memory_bytes", "cpu_secs", "processes", "file_bytes",
              "tmp_bytes", "open_files", "output_files", "output_files_bytes")


def read_settings(doc):
    """The harness's settings (`HarnessSettings`): descriptors, rlimits, limits and, cold, the
    seccomp filters."""
    document(doc, ("result_fd", "job_fd", "rlimits", "limits"), ("seccomp", "unjailed_test"))
    document(doc["rlimits"], ("NPROC", "CPU", "FSIZE", "NOFILE", "CORE"), ("AS",))
    document(doc["limits"], LIMIT_KEYS)
    return doc


def read_job(fd):
    """The job's JSON, from its descriptor (a memfd the service wrote), which is then closed."""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def line_buffered(stream):
    """`stream` again, on the same descriptor, written a line at a time as on a terminal: a
    `print` is one write (under `-u` it is one for the text and one for the end), so a reader
    of the pipe, a streamed answer above all, never sees a printed line in two parts. Text
    without a newline is written when the script flushes or returns; a script killed before
    then loses that unfinished line, as a program writing to a terminal would."""
    raw = io.FileIO(stream.fileno(), "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw), encoding=stream.encoding, errors=stream.errors,
        line_buffering=True,
    )


def enter(settings, filters):
    """Makes this process a harness for one script: its report channel, its limits, its
    filters. Returns the reporter once it has said "started"; no user code ran before."""
    global HARNESS_PID
    HARNESS_PID = os.getpid()
    limits = settings["limits"]
    reporter = Reporter(settings["result_fd"])
    sys.stdout, sys.stderr = line_buffered(sys.stdout), line_buffered(sys.stderr)
    faulthandler.enable(file=sys.stderr)
    apply_rlimits(settings["rlimits"])
    # Reported by the harness rather than left to the default action: in a pid namespace the
    # interpreter is process 1, which ignores signals it has no handler for.
    cpu_exceeded = failed("cpu_limit_exceeded", cpu_limit_secs=limits["cpu_secs"])
    signal.signal(signal.SIGXCPU, lambda *_: finish(reporter.send, cpu_exceeded))
    # Files the script creates are private to its uid unless it says otherwise.
    os.umask(0o077)
    filters.install()
    # Only the harness's own tests, which run it without a jail, leave this out.
    if not settings.get("unjailed_test"):
        filters.confirm_no_new_privs()
        with open("/proc/self/status") as status:
            confirm_confined(status.read())
    reporter.send({"event": "started"})
    return reporter


class unlimited_int_digits:
    """Python refuses to turn an int of more than 4,300 digits into text or back (a guard for
    programs parsing untrusted input); the harness's own reading of the job and writing of the
    result lift it, so every digit of the input reaches main() and of its result the caller.
    The script itself runs with Python's default."""

    def __enter__(self):
        self.before = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)

    def __exit__(self, *_):
        sys.set_int_max_str_digits(self.before)


def load_job(read_job, reporter, limits):
    """The job, read and parsed only now, after "started": what the request sent counts as
    the script's own, memory included, under the execution's limits."""
    try:
        data = read_job()
        with unlimited_int_digits():
            return json.loads(data)
    except MemoryError:
        finish(reporter.send, failed("memory_limit_exceeded", memory_limit_bytes=limits["memory_bytes"]))


def run(reporter, limits, read_job):
    """Reads the job (`read_job()` gives its JSON), makes the working directory with its input
    files, compiles and loads the script, calls main() (with the job's input, when it has
    one), and reports the result and, when asked, the files left in the working directory;
    never returns. With `strict_result`, the result is plain json's or refused (no mapping,
    NaN an error)."""
    job = load_job(read_job, reporter, limits)
    inputs = make_workdir(job.get("files") or ())
    source = job["script"]
    # Tracebacks show the script's lines from here: no main.py needs to exist in the cwd.
    # Every line ends in a newline, as linecache's own reading makes them (the carets under
    # an expression are placed by the line's length).
    lines = [line if line.endswith("\n") else line + "\n" for line in source.splitlines(True)]
    linecache.cache[SCRIPT_FILENAME] = (len(source), None, lines, SCRIPT_FILENAME)
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
    has_input = "input" in job
    arguments = (job["input"],) if has_input else ()
    if has_input and not takes_a_positional(function):
        finish(reporter.send, failed("main_takes_no_input"))
    required = required_parameters(function, len(arguments))
    if required:
        finish(reporter.send, failed("main_requires_arguments", parameters=required, input_given=has_input))

    try:
        if is_coroutine_function(function):
            import asyncio

            value = asyncio.run(function(*arguments))
        else:
            value = function(*arguments)
    except SystemExit as exc:
        finish(reporter.send, exit_frame(exc))
    except BaseException as exc:
        finish(reporter.send, exception_frame(exc, "main", limits))

    encoder = None if job.get("strict_result") else ResultEncoder()
    try:
        with unlimited_int_digits():
            encoded = utf8(dumps(value) if encoder is None else encoder.encode(value))
    except Unencodable as exc:
        path, problem, bad_type = exc.found
        finish(reporter.send, failed("result_not_serializable", type=bad_type, path=path, problem=problem))
    except MemoryError:
        finish(reporter.send, failed("memory_limit_exceeded", memory_limit_bytes=limits["memory_bytes"]))
    except Exception as exc:
        # json refused it, or a value's own method (an isoformat, a __len__) raised.
        finish(reporter.send, not_serializable_frame(value, exc))
    if len(encoded) > limits["result_bytes"]:
        finish(reporter.send, failed(
            "result_too_large", result_bytes=len(encoded), limit_bytes=limits["result_bytes"]
        ))
    extra = {}
    if encoder is not None and encoder.nulls:
        extra["nulls"] = {"count": encoder.nulls, "paths": encoder.null_paths}
    wanted = job.get("return_files")
    if wanted:
        patterns = wanted if isinstance(wanted, list) else None
        caps = {"files": limits["output_files"], "bytes": limits["output_files_bytes"]}
        try:
            extra.update(FileCollector(caps, patterns, inputs).collect("."))
        except MemoryError:
            finish(reporter.send, failed("memory_limit_exceeded", memory_limit_bytes=limits["memory_bytes"]))
    finish(lambda encoded: reporter.send_result(encoded, extra), encoded)


def main():
    """The cold path: SETTINGS on the command line, the job on its descriptor."""
    settings = read_settings(json.loads(sys.argv[1]))
    reporter = enter(settings, Filters(settings["seccomp"]))
    run(reporter, settings["limits"], lambda: read_job(settings["job_fd"]))


if __name__ == "__main__":
    main()
