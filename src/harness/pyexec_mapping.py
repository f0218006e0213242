"""The result mapping: how main()'s value becomes JSON text (see harness.py). Part of the
harness, installed beside it."""

import gc
import itertools
import json
import math
import sys

# Lone surrogates (names and text that were not UTF-8) as U+FFFD.
SURROGATES = dict.fromkeys(range(0xD800, 0xE000), 0xFFFD)

# How deep a result may nest, in both the mapping and the search for what json refuses.
MAX_DEPTH = 200
# Bounds on words taken from the script's own objects (see harness.py): a dict key's repr in a
# path, a type's name. In characters.
MAX_KEY_REPR = 80
MAX_TYPE_NAME = 200


def type_name(value):
    cls = type(value)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None)
    if not isinstance(name, str):
        name = "<unnamed type>"
    if isinstance(module, str) and module != "builtins":
        name = f"{module}.{name}"
    return name[:MAX_TYPE_NAME]


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
        if len(parents) >= MAX_DEPTH:
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


def dumps(value):
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


# A str as a JSON string literal, quotes included: json's own C function (called per value
# of a text column, so no Python wrapper).
encode_basestring = json.encoder.encode_basestring


# --- The result mapping -------------------------------------------------------------------
# What json cannot carry but numpy and pandas users return (README's table, checked by
# test_harness.py): numpy scalars and arrays, DataFrames, Series, Index, dates and times,
# durations, Decimal; NaN, NaT, pd.NA and ±Infinity become null, and every place that
# happened is counted (the first MAX_NULL_PATHS named). Anything else is still refused with
# its path and type. The output is plain JSON text built only from json's own encoders,
# Python's int/float repr and literals, so no value can add a frame or escape the string it
# is in; the service's size cap applies to the result as encoded.

MAX_NULL_PATHS = 100


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
