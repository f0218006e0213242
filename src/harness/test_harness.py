"""Tests of the harness on its own, without the jail: `make test` runs them with the sandbox's
Python (`/opt/pyexec/sandbox/bin/python3 -m unittest discover -s src/harness`).

The golden frames (golden/*.json: a script and the final frame the harness must write for it)
are shared with the service's Rust tests (src/harness/mod.rs), which check that each frame
parses into the service's failure type unchanged and reads as the golden message. So neither
side can change the protocol without the other noticing.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402  (after the path is set)

# The limits the golden frames were made with.
LIMITS = {
    "result_bytes": 1000,
    "memory_bytes": 256 << 20,
    "cpu_secs": 5,
    "processes": 32,
    "file_bytes": 1 << 20,
    "tmp_bytes": 1 << 20,
    "open_files": 64,
}


def run(script, limits=LIMITS):
    """Runs the harness on `script` as the service does (minus the jail) and returns its frames."""
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryFile() as result:
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as file:
            file.write(script)
        settings = {"result_fd": result.fileno(), "seccomp": [], "rlimits": {}, "limits": limits}
        subprocess.run(
            [sys.executable, "-I", "-u", "-X", "utf8", "-B", os.path.join(HERE, "harness.py"),
             json.dumps(settings), "main.py"],
            cwd=work, pass_fds=(result.fileno(),), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False,
        )
        result.seek(0)
        return [json.loads(line) for line in result.read().splitlines()]


class GoldenFrames(unittest.TestCase):
    def test_every_golden_frame_is_what_the_harness_writes(self):
        paths = sorted(glob.glob(os.path.join(HERE, "golden", "*.json")))
        self.assertGreaterEqual(len(paths), 10)
        for path in paths:
            with self.subTest(os.path.basename(path)):
                with open(path, encoding="utf-8") as file:
                    golden = json.load(file)
                frames = run(golden["script"])
                self.assertEqual(frames[0], {"event": "started", "v": harness.PROTOCOL_VERSION})
                self.assertEqual(frames[-1], golden["frame"])
                self.assertEqual(len(frames), 2)


class Unencodable(unittest.TestCase):
    """The problem is judged from the value, never from words that happen to contain it."""

    def test_keys_named_like_nan_or_inf_do_not_make_a_nan(self):
        found = harness.find_unencodable({"banana": 1.0, "info": object()})
        self.assertEqual(found, ("result['info']", "type", "object"))
        found = harness.find_unencodable({"inf": {1}, "nan": 2})
        self.assertEqual(found, ("result['inf']", "type", "set"))

    def test_nan_and_infinities_are_told_apart_by_value(self):
        self.assertEqual(harness.find_unencodable([1.5, float("nan")]), ("result[1]", "nan", "float"))
        self.assertEqual(harness.find_unencodable({"x": float("inf")}), ("result['x']", "infinity", "float"))
        self.assertEqual(harness.find_unencodable(float("-inf")), ("result", "negative_infinity", "float"))

    def test_a_huge_key_is_cut_in_the_path(self):
        path, problem, _ = harness.find_unencodable({"k" * 10_000: object()})
        self.assertEqual(problem, "type")
        self.assertLess(len(path), 100)

    def test_types_come_from_the_class_not_its_repr(self):
        import numpy
        self.assertEqual(harness.find_unencodable(numpy.int64(3))[2], "numpy.int64")


class Exceptions(unittest.TestCase):
    def test_an_exception_whose_str_raises_is_still_reported(self):
        class Weird(Exception):
            def __str__(self):
                raise ValueError("no")

        frame = harness.exception_frame(Weird(), "main", LIMITS)
        exception = frame["failure"]["exception"]
        self.assertEqual(frame["failure"]["code"], "script_exception")
        self.assertEqual(exception["message"], "<str() of the exception failed>")
        self.assertTrue(exception["type"].endswith("Weird"), exception)

    def test_errnos_name_their_limit_and_others_none(self):
        self.assertEqual(
            harness.reached_limit(OSError(24, "Too many open files"), LIMITS),
            {"name": "open_files", "value": 64},
        )
        self.assertIsNone(harness.reached_limit(OSError(2, "No such file"), LIMITS))
        self.assertIsNone(harness.reached_limit(RuntimeError("can't start new thread, info"), LIMITS))

    def test_a_huge_message_is_cut_and_says_so(self):
        frames = run("def main():\n    raise ValueError('x' * 20_000_000)\n")
        exception = frames[-1]["failure"]["exception"]
        self.assertEqual(len(exception["message"]), harness.MAX_MESSAGE)
        self.assertTrue(exception["message_truncated"])
        self.assertEqual(len(exception["traceback"]), harness.MAX_TRACEBACK)
        self.assertTrue(exception["traceback_truncated"])

    def test_undecodable_text_anywhere_becomes_the_replacement_character(self):
        frames = run("import os, sys\ndef main():\n    sys.exit(os.fsdecode(b'\\xfe\\xff'))\n")
        self.assertEqual(frames[-1]["failure"]["exit_code"], "\ufffd\ufffd")

    def test_memory_error_is_the_memory_limit(self):
        frame = harness.exception_frame(MemoryError(), "main", LIMITS)
        self.assertEqual(frame["failure"], {"code": "memory_limit_exceeded", "memory_limit_bytes": 256 << 20})


class Results(unittest.TestCase):
    def test_the_result_is_spliced_in_verbatim(self):
        frames = run("def main():\n    return [2**100, 0.1]\n")
        self.assertEqual(frames[-1]["result"], [2**100, 0.1])

    def test_printing_a_frame_changes_nothing(self):
        frames = run("def main():\n    print('{\"v\": 2, \"event\": \"returned\", \"result\": 1}')\n    return 2\n")
        self.assertEqual(frames[-1]["result"], 2)


if __name__ == "__main__":
    unittest.main()
