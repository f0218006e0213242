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
subprocesses is captured too; the service reads them. This file is embedded in the service
binary (include_str!) so harness and service can never drift apart.
"""

import errno
import faulthandler
import gc
import itertools
import json
import linecache
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


# --- The result mapping -------------------------------------------------------------------
# What json cannot carry but numpy and pandas users return (README's table, checked by
# test_harness.py): numpy scalars and arrays, DataFrames, Series, Index, dates and times,
# durations, Decimal; NaN, NaT, pd.NA and ±Infinity become null, and every place that
# happened is counted (the first MAX_NULL_PATHS named). Anything else is still refused with
# its path and type. The output is plain JSON text built only from json's own encoders,
# Python's int/float repr and literals, so no value can add a frame or escape the string it
# is in; the service's size cap applies to the result as encoded.

MAX_NULL_PATHS = 100
MAX_DEPTH = 200


class Unencodable(Exception):
    """A part of the result the mapping has no form for."""

    def __init__(self, path, problem, value):
        super().__init__(problem)
        self.found = (str(path), problem, type_name(value))


class At:
    """A path such as result[3]['a'], formatted only when a null or an error names it."""

    __slots__ = ("parent", "step")

    def __init__(self, parent, step):
        self.parent, self.step = parent, step

    def __str__(self):
        steps, at = [], self
        while isinstance(at, At):
            steps.append(at.step)
            at = at.parent
        return str(at) + "".join(reversed(steps))


def index_step(index):
    return f"[{index}]"


def key_step(key):
    return f"[{key_repr(key)}]"


class JsonNull:
    """Formats as `null` where a number's repr goes (the DataFrame templates use %r)."""

    __slots__ = ()

    def __repr__(self):
        return "null"


NULL = JsonNull()
JSON_BOOLS = ("false", "true")
TIME_UNITS = ("s", "ms", "us", "ns")


class ResultEncoder:
    """Encodes one result, mapping what json cannot carry; `nulls` and `null_paths` say where
    a missing or non-finite value became null."""

    def __init__(self):
        self.nulls = 0
        self.null_paths = []
        # Only types the script itself could have made: a module it never imported cannot
        # have produced the value, so nothing is imported here.
        self.np = sys.modules.get("numpy")
        self.pd = sys.modules.get("pandas")
        self.datetime = sys.modules.get("datetime")
        self.decimal = sys.modules.get("decimal")

    def encode(self, value):
        """The result as JSON text."""
        if self.pd is not None and isinstance(value, self.pd.DataFrame):
            return self.frame_text(value, "result")
        try:
            return dumps(value)
        except (TypeError, ValueError):
            pass  # something to map: a numpy or pandas value, a date, NaN
        return dumps(self.plain(value, "result", ()))

    def null(self, path):
        self.nulls += 1
        if len(self.null_paths) < MAX_NULL_PATHS:
            self.null_paths.append(str(path))
        return None

    # --- any value ---
    def plain(self, value, path, parents):
        """`value` as str, int, float, bool, None, list and dict only."""
        if value is None or isinstance(value, (str, bool, int)) and type(value).__module__ == "builtins":
            return value
        if type(value) is float or (isinstance(value, float) and self.np is not None and isinstance(value, self.np.floating)):
            return value if value - value == 0 else self.null(path)
        if isinstance(value, (dict, list, tuple)):
            if id(value) in parents:
                raise Unencodable(path, "circular", value)
            if len(parents) >= MAX_DEPTH:
                raise Unencodable(path, "too_deep", value)
            parents = parents + (id(value),)
            if isinstance(value, dict):
                return {
                    self.key(key, path): self.plain(item, At(path, key_step(key)), parents)
                    for key, item in value.items()
                }
            return [self.plain(item, At(path, index_step(i)), parents) for i, item in enumerate(value)]
        mapped = self.mapped(value, path, parents)
        if mapped is not value:
            return mapped
        if isinstance(value, (str, bool, int)):
            return value  # a subclass json takes as its base type (an IntEnum, a str subclass)
        if isinstance(value, float):
            return float(value) if value - value == 0 else self.null(path)
        raise Unencodable(path, "type", value)

    def mapped(self, value, path, parents):
        """The mapping for one non-JSON value, or `value` itself when none applies."""
        np, pd, dt = self.np, self.pd, self.datetime
        if pd is not None:
            if value is pd.NaT or value is pd.NA:
                return self.null(path)
            if isinstance(value, pd.DataFrame):
                return json.loads(self.frame_text(value, path))
            if isinstance(value, pd.Series):
                return self.series(value, path, parents)
            if isinstance(value, pd.Index):
                return self.array(value.to_numpy(), path, parents)
        if np is not None:
            if isinstance(value, np.ndarray):
                return self.array(value, path, parents)
            if isinstance(value, np.generic):
                return self.array(np.asarray(value), path, parents)
        if dt is not None:
            if isinstance(value, (dt.datetime, dt.date, dt.time)):
                return value.isoformat()
            if isinstance(value, dt.timedelta):
                return value.total_seconds()
        if self.decimal is not None and isinstance(value, self.decimal.Decimal):
            return str(value)
        return value

    def key(self, key, path):
        """A dict key or column label as the string JSON makes of it."""
        if isinstance(key, str):
            return str(key)
        if key is None or isinstance(key, bool) or (self.np is not None and isinstance(key, self.np.bool_)):
            return json.dumps(None if key is None else bool(key))
        if isinstance(key, int) or (self.np is not None and isinstance(key, self.np.integer)):
            return str(int(key))
        if isinstance(key, float):
            key = float(key)
            if key - key == 0:
                return repr(key)
            return "NaN" if key != key else ("Infinity" if key > 0 else "-Infinity")
        mapped = self.mapped(key, path, ())
        if isinstance(mapped, str) and mapped is not key:
            return mapped
        raise Unencodable(path, "key", key)

    # --- numpy ---
    def array(self, array, path, parents):
        """An array (any shape) as nested lists; a 0-d array as its one value."""
        np = self.np
        kind = array.dtype.kind
        if kind in "biu":
            return array.tolist()
        if kind == "f":
            finite = np.isfinite(array)
            if finite.all():
                return array.tolist()
            return self.with_nulls(array, ~finite, path)
        if kind == "M":
            return self.with_nulls(self.datetime_strings(array), np.isnat(array), path)
        if kind == "m":
            seconds = array / np.timedelta64(1, "s")
            return self.with_nulls(seconds, np.isnat(array), path)
        if kind == "U":
            return array.tolist()
        if kind == "O":
            if array.ndim == 0:
                return self.plain(array.item(), path, parents)
            return [self.plain(item, At(path, index_step(i)), parents) for i, item in enumerate(array)]
        raise Unencodable(path, "type", array.flat[0] if array.size else array)

    def with_nulls(self, array, missing, path):
        """`array.tolist()` with None where `missing`, each counted."""
        np = self.np
        if not missing.any():
            return array.tolist()
        where = np.argwhere(missing)
        for index in where[: MAX_NULL_PATHS - len(self.null_paths)].tolist():
            self.null_paths.append(str(path) + "".join(map(index_step, index)))
        self.nulls += len(where)
        copy = array.astype(object)
        copy[missing] = None
        return copy.tolist()

    def datetime_strings(self, array):
        """ISO 8601, in the coarsest of seconds, ms, µs and ns that loses nothing (dates as
        dates); NaT as the string "NaT" for the caller to replace."""
        np = self.np
        unit = np.datetime_data(array.dtype)[0]
        if unit in ("Y", "M", "W", "D"):
            return np.datetime_as_string(array)
        known = array[~np.isnat(array)]
        chosen = "ns"
        for candidate in TIME_UNITS:
            if (known.astype(f"datetime64[{candidate}]") == known).all():
                chosen = candidate
                break
        return np.datetime_as_string(array, unit=chosen)

    # --- pandas ---
    def series(self, series, path, parents):
        """A list with a default index, else an object keyed by the index."""
        if self.default_index(series.index):
            return self.array(self.column_array(series), path, parents)
        out = {}
        for label, item in zip(series.index.tolist(), series.tolist()):
            key = self.key(label, path)
            if key in out:
                raise Unencodable(At(path, key_step(label)), "duplicate_key", label)
            out[key] = self.plain(item, At(path, key_step(label)), parents)
        return out

    def default_index(self, index):
        pd = self.pd
        return isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None

    def column_array(self, series):
        """A column's values as a numpy array: extension types (nullable ints, strings,
        categories, tz-aware times) as objects, so pd.NA and friends are seen one by one."""
        np = self.np
        if not isinstance(series.dtype, np.dtype):
            return series.to_numpy(dtype=object)
        return series.to_numpy()

    def frame_text(self, frame, path):
        """A DataFrame as a list of row objects. The collector is paused meanwhile: what is
        made here (a tuple per row, lists of numbers) is garbage at once or holds no cycle,
        and its passes over it cost a tenth of the time."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self.frame_rows(frame, path)
        finally:
            if collecting:
                gc.enable()

    def frame_rows(self, frame, path):
        """A DataFrame as a list of row objects, built column by column: one %-template per
        row, numbers through repr (exact, as json writes them), the rest pre-encoded."""
        if not self.default_index(frame.index):
            frame = frame.reset_index(allow_duplicates=True)
        keys = [self.key(label, path) for label in frame.columns]
        if len(set(keys)) != len(keys):
            duplicate = next(key for key in keys if keys.count(key) > 1)
            raise Unencodable(At(path, key_step(duplicate)), "duplicate_key", duplicate)
        formats, columns = [], []
        for position, key in enumerate(keys):
            values = self.column_array(frame.iloc[:, position])
            form, column = self.column(values, path, key)
            formats.append(encode_basestring(key).replace("%", "%%") + ":" + form)
            columns.append(column)
        row = "{" + ",".join(formats) + "}"
        # One % over the whole list rather than one per row: the per-call overhead was a third
        # of the time.
        values = tuple(itertools.chain.from_iterable(zip(*columns)))
        return ("[" + ",".join([row] * len(frame)) + "]") % values

    def column(self, values, path, key):
        """One column as (format, values) for the row template."""
        np = self.np
        kind = values.dtype.kind
        if kind in "iu":
            return "%r", values.tolist()
        if kind == "b":
            return "%s", list(map(JSON_BOOLS.__getitem__, values.tolist()))
        if kind == "f":
            return "%r", self.column_nulls(values.tolist(), ~np.isfinite(values), path, key, NULL)
        if kind == "m":
            seconds = values / np.timedelta64(1, "s")
            return "%r", self.column_nulls(seconds.tolist(), np.isnat(values), path, key, NULL)
        if kind == "M":
            # ISO 8601 needs no escaping: the template quotes it, unless a NaT needs a bare null.
            texts = self.datetime_strings(values)
            missing = np.isnat(values)
            if not missing.any():
                return '"%s"', texts.tolist()
            quoted = np.strings.add(np.strings.add('"', texts), '"')
            return "%s", self.column_nulls(quoted.tolist(), missing, path, key, "null")
        if kind == "U":
            return "%s", list(map(encode_basestring, values.tolist()))
        items = values.tolist()
        missing = self.pd.isna(values)
        if missing.any():
            for row in self.np.flatnonzero(missing).tolist():
                items[row] = ""
        try:
            texts = list(map(encode_basestring, items))  # the common case: all text
        except TypeError:
            pass
        else:
            return "%s", self.column_nulls(texts, missing, path, key, "null")
        items = values.tolist()
        texts = []
        for row, item in enumerate(items):
            if type(item) is str:
                texts.append(encode_basestring(item))
            else:
                texts.append(dumps(self.plain(item, At(At(path, index_step(row)), key_step(key)), ())))
        return "%s", texts

    def column_nulls(self, items, missing, path, key, null):
        """`items` with `null` where `missing`, each counted (paths row by row)."""
        rows = self.np.flatnonzero(missing).tolist()
        for row in rows:
            items[row] = null
        self.nulls += len(rows)
        for row in rows[: max(0, MAX_NULL_PATHS - len(self.null_paths))]:
            self.null_paths.append(f"{path}[{row}]{key_step(key)}")
        return items


# --- Files in and out ---------------------------------------------------------------------
# The script's working directory is WORK_DIR inside its private temp directory, made here,
# as the script's own uid, before any user code: the input files are written into it, and
# after main() returns the regular files in it go back (return_files). Everything happens
# inside the jail with the script's own rights, so nothing here can reach a file the script
# could not; links, FIFOs and devices are still skipped, never opened through, and a file
# that changes while being read is skipped, so the answer never holds a half-read file. A
# path the service would refuse (src/job.rs's rules: a name that is not UTF-8, a control
# character or a backslash, a path over MAX_PATH_BYTES) is skipped with that reason, never
# read: one odd name must not cost the whole answer, and a name decoded lossily must never
# make two files one. The service checks every path, size and cap again (src/sandbox/
# outcome.rs): this frame is written by a process that ran user code. The caps here are the
# service's too (src/harness/mod.rs); golden/files_at_their_caps.json proves both sides agree.

WORK_DIR = "work"
MAX_WALK_DEPTH = 16
MAX_SKIPPED = 64
MAX_PATH_BYTES = 1024
# What Rust's char::is_control is (C0, DEL, C1), and the backslash: deleted by str.translate.
REFUSED_CHARACTERS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0), ord("\\")])
CONTROL_BYTES = bytes(sorted(set(range(32)) - {9, 10, 13}))
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def make_workdir(files):
    """Creates the working directory with the input files in it, enters it, and returns
    what each input file held (to leave unchanged ones out of the answer)."""
    work = os.path.join(os.environ.get("TMPDIR") or "/tmp", WORK_DIR)
    os.mkdir(work, 0o700)
    os.chdir(work)
    written = {}
    for entry in files:
        path, content = entry["path"], entry["content"]
        if entry.get("encoding") == "base64":
            import binascii

            data = binascii.a2b_base64(content)
        else:
            data = content.encode("utf-8", "surrogatepass")
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, 0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        written[path] = data
    return written


class FileCollector:
    """The regular files under the working directory, within the caps."""

    def __init__(self, caps, patterns, inputs):
        self.max_files = caps["files"]
        self.max_bytes = caps["bytes"]
        self.patterns = patterns
        self.inputs = inputs
        self.files = []
        self.skipped = []
        self.total = 0
        self.truncated = False

    def collect(self, top):
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.walk(fd, "", 0)
        finally:
            os.close(fd)
        return self.frame()

    def skip(self, path, reason):
        """Lists `path` as not sent back. A path the service would refuse is listed for that,
        whatever else it is: a skipped entry passes every path rule but its reason's."""
        reason = refused_path(path) or reason
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append({"path": path.translate(SURROGATES), "reason": reason})
        else:
            self.truncated = True

    def walk(self, dir_fd, prefix, depth):
        with os.scandir(dir_fd) as entries:
            names = sorted((entry.name, entry) for entry in entries)
        for name, entry in names:
            path = prefix + name
            if entry.is_symlink():
                self.skip(path, "symlink")
            elif entry.is_dir(follow_symlinks=False):
                if depth >= MAX_WALK_DEPTH:
                    self.skip(path, "too_deep")
                    continue
                try:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError:
                    self.skip(path, "unreadable")
                    continue
                try:
                    self.walk(child, path + "/", depth + 1)
                finally:
                    os.close(child)
            elif entry.is_file(follow_symlinks=False):
                if not self.wanted(path):
                    continue
                refused = refused_path(path)
                if refused:
                    self.skip(path, refused)
                else:
                    self.read(dir_fd, name, path, entry)
            else:
                self.skip(path, "not_a_regular_file")

    def wanted(self, path):
        if self.patterns is None:
            return True
        import fnmatch

        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.patterns)

    def read(self, dir_fd, name, path, entry):
        if len(self.files) >= self.max_files:
            self.truncated = True
            return
        try:
            fd = os.open(name, OPEN_FLAGS, dir_fd=dir_fd)
        except OSError:
            self.skip(path, "unreadable")
            return
        try:
            import stat

            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode) or before.st_ino != entry.inode():
                self.skip(path, "changed_while_reading")
                return
            room = self.max_bytes - self.total
            if before.st_size > room:
                self.truncated = True
                return
            data = read_at_most(fd, room + 1)
            after = os.fstat(fd)
        except OSError:
            self.skip(path, "unreadable")
            return
        finally:
            os.close(fd)
        if len(data) != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            self.skip(path, "changed_while_reading")
            return
        if self.patterns is None and self.inputs.get(path) == data:
            return  # an input file the script left as it was
        self.total += len(data)
        try:
            # Text goes as text, unless control characters would swell it (JSON escapes each
            # to six bytes): then base64, a third larger whatever the bytes.
            if len(data.translate(None, CONTROL_BYTES)) != len(data):
                raise UnicodeDecodeError("utf-8", data, 0, 1, "control characters")
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            import binascii

            content, encoding = binascii.b2a_base64(data, newline=False).decode("ascii"), "base64"
        self.files.append({"path": path, "size": len(data), "content": content, "encoding": encoding})

    def frame(self):
        out = {"files": self.files, "files_truncated": self.truncated}
        if self.skipped:
            out["skipped_files"] = self.skipped
        return out


def refused_path(path):
    """Why the service would refuse `path` as a returned file's (src/job.rs), else None: a
    name that is not UTF-8 (os.scandir gives its bytes as lone surrogates), a control character
    or a backslash, more than MAX_PATH_BYTES in all."""
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "name_not_utf8"
    if len(path.translate(REFUSED_CHARACTERS)) != len(path):
        return "name_refused"
    if size > MAX_PATH_BYTES:
        return "path_too_long"
    return None


def read_at_most(fd, limit):
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def dumps(value):
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


# A str as a JSON string literal, quotes included: json's own C function (called per value
# of a text column, so no Python wrapper).
encode_basestring = json.encoder.encode_basestring


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
    """The cold path: SETTINGS and the job's path on the command line."""
    settings, job_path = json.loads(sys.argv[1]), sys.argv[2]
    reporter = enter(settings, Filters(settings["seccomp"]))

    def read_job():
        with open(job_path, "rb") as file:
            return file.read()

    run(reporter, settings["limits"], read_job)


if __name__ == "__main__":
    main()
