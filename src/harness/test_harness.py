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
import pyexec_confine  # noqa: E402
import pyexec_files  # noqa: E402
import pyexec_mapping  # noqa: E402
import zygote  # noqa: E402

# The limits the golden frames were made with.
LIMITS = {
    "result_bytes": 1000,
    "memory_bytes": 256 << 20,
    "cpu_secs": 5,
    "processes": 32,
    "file_bytes": 1 << 20,
    "tmp_bytes": 1 << 20,
    "open_files": 64,
    "output_files": 4,
    "output_files_bytes": 1000,
}


def run(script, limits=LIMITS, **job):
    """Runs the harness on `script` (and the rest of the job: input, files, return_files,
    strict_result) as the service does, minus the jail, and returns its frames."""
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryFile() as result, \
            tempfile.TemporaryFile() as job_file:
        os.mkdir(os.path.join(work, "tmp"))
        job_file.write(json.dumps({"script": script, **job}).encode())
        job_file.seek(0)
        settings = {"result_fd": result.fileno(), "job_fd": job_file.fileno(), "seccomp": [],
                    "rlimits": {"NPROC": 1 << 14, "CPU": [600, 601], "FSIZE": 1 << 30,
                                "NOFILE": 1024, "CORE": 0},
                    "limits": limits, "unjailed_test": True}
        subprocess.run(
            [sys.executable, "-I", "-u", "-X", "utf8", "-B", os.path.join(HERE, "harness.py"),
             json.dumps(settings)],
            cwd=work, env={"TMPDIR": os.path.join(work, "tmp")},
            pass_fds=(result.fileno(), job_file.fileno()),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=60, check=False,
        )
        result.seek(0)
        return [json.loads(line) for line in result.read().splitlines()]


LINUX_STATUS = """Name:\tpython3
Uid:\t65534\t65534\t65534\t65534
Gid:\t65534\t65534\t65534\t65534
Groups:\t
NoNewPrivs:\t1
Seccomp:\t2
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000000000
CapAmb:\t0000000000000000
"""
# gVisor's: no NoNewPrivs and no CapAmb line.
GVISOR_STATUS = "\n".join(
    line for line in LINUX_STATUS.splitlines() if not line.startswith(("NoNewPrivs", "CapAmb"))
)


class Confinement(unittest.TestCase):
    def test_a_confined_process_passes_on_linux_and_on_gvisor(self):
        pyexec_confine.confirm_confined(LINUX_STATUS)
        pyexec_confine.confirm_confined(GVISOR_STATUS)

    def test_every_gap_is_named(self):
        for old, new, named in [
            ("CapInh:\t0000000000000000", "CapInh:\t000001ffffffffff", "CapInh 000001ffffffffff"),
            ("CapBnd:\t0000000000000000", "CapBnd:\t00000000000000ff", "CapBnd"),
            ("CapAmb:\t0000000000000000", "CapAmb:\t0000000000000001", "CapAmb"),
            ("Seccomp:\t2", "Seccomp:\t0", "Seccomp 0"),
            ("NoNewPrivs:\t1", "NoNewPrivs:\t0", "NoNewPrivs 0"),
            ("Uid:\t65534\t65534\t65534\t65534", "Uid:\t65534\t0\t65534\t65534", "Uid"),
            ("Gid:\t65534\t65534\t65534\t65534", "Gid:\t0\t0\t0\t0", "Gid 0 0 0 0"),
            ("Groups:\t", "Groups:\t0 27", "supplementary groups 0 27"),
        ]:
            with self.subTest(named), self.assertRaisesRegex(PermissionError, named):
                pyexec_confine.confirm_confined(LINUX_STATUS.replace(old, new))

    def test_a_missing_seccomp_line_is_not_taken_for_a_filter(self):
        status = "\n".join(line for line in LINUX_STATUS.splitlines() if "Seccomp" not in line)
        with self.assertRaisesRegex(PermissionError, "Seccomp unknown"):
            pyexec_confine.confirm_confined(status)


class GoldenDocuments(unittest.TestCase):
    """The documents the service sends in and the replies it reads back (their Rust types are
    in src/sandbox/documents.rs, which checks the same files)."""

    def golden(self, name):
        with open(os.path.join(HERE, "golden", "documents", name), encoding="utf-8") as file:
            return json.load(file)

    def test_what_the_service_sends_is_what_python_reads(self):
        harness.read_settings(self.golden("harness_settings.json"))
        zygote.read_init(self.golden("zygote_init.json"))
        zygote.read_jail(self.golden("warm_jail.json"))
        self.assertTrue(zygote.is_fork_request(self.golden("fork_request.json")))

    def test_a_document_with_a_key_too_many_or_too_few_is_refused(self):
        settings = self.golden("harness_settings.json")
        for broken in ({**settings, "extra": 1}, {k: v for k, v in settings.items() if k != "limits"}):
            with self.assertRaises(ValueError):
                harness.read_settings(broken)
        jail = self.golden("warm_jail.json")
        with self.assertRaises(ValueError):
            zygote.read_jail({**jail, "settings": {**jail["settings"], "job_fd": 4}})

    def test_what_the_zygote_replies_is_what_the_service_reads(self):
        replies = self.golden("replies.json")
        self.assertEqual(zygote.ready(42), replies["ready"])
        self.assertEqual(zygote.spawned(43), replies["spawned"])
        self.assertEqual(zygote.fork_error("fork: no memory"), replies["error"])
        self.assertEqual(zygote.exited(256), replies["exit"])


class GoldenFrames(unittest.TestCase):
    def test_every_golden_frame_is_what_the_harness_writes(self):
        paths = sorted(glob.glob(os.path.join(HERE, "golden", "*.json")))
        self.assertGreaterEqual(len(paths), 10)
        for path in paths:
            with self.subTest(os.path.basename(path)):
                with open(path, encoding="utf-8") as file:
                    golden = json.load(file)
                frames = run(golden["script"], **golden.get("job", {}))
                self.assertEqual(frames[0], {"event": "started", "v": harness.PROTOCOL_VERSION})
                self.assertEqual(frames[-1], golden["frame"])
                self.assertEqual(len(frames), 2)


class Unencodable(unittest.TestCase):
    """The problem is judged from the value, never from words that happen to contain it."""

    def test_keys_named_like_nan_or_inf_do_not_make_a_nan(self):
        found = pyexec_mapping.find_unencodable({"banana": 1.0, "info": object()})
        self.assertEqual(found, ("result['info']", "type", "object"))
        found = pyexec_mapping.find_unencodable({"inf": {1}, "nan": 2})
        self.assertEqual(found, ("result['inf']", "type", "set"))

    def test_nan_and_infinities_are_told_apart_by_value(self):
        self.assertEqual(pyexec_mapping.find_unencodable([1.5, float("nan")]), ("result[1]", "nan", "float"))
        self.assertEqual(pyexec_mapping.find_unencodable({"x": float("inf")}), ("result['x']", "infinity", "float"))
        self.assertEqual(pyexec_mapping.find_unencodable(float("-inf")), ("result", "negative_infinity", "float"))

    def test_a_huge_key_is_cut_in_the_path(self):
        path, problem, _ = pyexec_mapping.find_unencodable({"k" * 10_000: object()})
        self.assertEqual(problem, "type")
        self.assertLess(len(path), 100)

    def test_types_come_from_the_class_not_its_repr(self):
        import numpy
        self.assertEqual(pyexec_mapping.find_unencodable(numpy.int64(3))[2], "numpy.int64")


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


class Input(unittest.TestCase):
    def test_main_gets_the_input_as_json_reads_it(self):
        frames = run("def main(data):\n    return [data['n'] + 1, data['rows']]\n", input={"n": 1, "rows": [None]})
        self.assertEqual(frames[-1]["result"], [2, [None]])

    def test_a_null_input_is_an_input(self):
        frames = run("def main(data=5):\n    return data\n", input=None)
        self.assertEqual(frames[-1]["result"], None)

    def test_without_input_main_is_called_bare(self):
        frames = run("def main(data=5):\n    return data\n")
        self.assertEqual(frames[-1]["result"], 5)

    def test_varargs_take_the_input(self):
        frames = run("def main(*args):\n    return list(args)\n", input="x")
        self.assertEqual(frames[-1]["result"], ["x"])

    def test_a_keyword_only_main_cannot_take_it(self):
        frames = run("def main(*, data):\n    return data\n", input=1)
        self.assertEqual(frames[-1]["failure"], {"code": "main_takes_no_input"})


def file_job(script, files=(), **job):
    return run(script, files=list(files), **job)[-1]


class Files(unittest.TestCase):
    def test_input_files_are_in_the_working_directory_read_write(self):
        frame = file_job(
            "import os\ndef main():\n    open('data/in.csv', 'a').write('3\\n')\n"
            "    return [open('data/in.csv').read(), open('raw.bin', 'rb').read().hex(), os.getcwd().endswith('/work')]\n",
            [{"path": "data/in.csv", "content": "1\n2\n"}, {"path": "raw.bin", "content": "AAH/", "encoding": "base64"}],
        )
        self.assertEqual(frame["result"], ["1\n2\n3\n", "0001ff", True])

    def test_new_and_changed_files_come_back_unchanged_inputs_do_not(self):
        frame = file_job(
            "def main():\n    open('b.txt', 'w').write('new')\n    open('changed.txt', 'w').write('x')\n",
            [{"path": "same.txt", "content": "s"}, {"path": "changed.txt", "content": "c"}],
            return_files=True,
        )
        self.assertEqual(
            [(f["path"], f["content"], f["encoding"], f["size"]) for f in frame["files"]],
            [("b.txt", "new", "utf-8", 3), ("changed.txt", "x", "utf-8", 1)],
        )
        self.assertFalse(frame["files_truncated"])

    def test_patterns_pick_files_inputs_included(self):
        frame = file_job(
            "import os\ndef main():\n    os.mkdir('out')\n    open('out/r.csv', 'w').write('a')\n    open('x.log', 'w').write('l')\n",
            [{"path": "in.csv", "content": "i"}],
            return_files=["*.csv"],
        )
        self.assertEqual([f["path"] for f in frame["files"]], ["in.csv", "out/r.csv"])

    def test_binary_and_control_characters_come_back_as_base64(self):
        frame = file_job(
            "def main():\n    open('b', 'wb').write(bytes(range(256)))\n    open('c', 'w').write('a\\x00b')\n    open('t', 'w').write('tab\\there\\r\\n')\n",
            return_files=True,
        )
        encodings = {f["path"]: f["encoding"] for f in frame["files"]}
        self.assertEqual(encodings, {"b": "base64", "c": "base64", "t": "utf-8"})
        import base64

        self.assertEqual(base64.b64decode(frame["files"][0]["content"]), bytes(range(256)))

    def test_links_fifos_and_sockets_are_skipped_never_read(self):
        frame = file_job(
            "import os, socket\ndef main():\n    os.symlink('/etc/passwd', 'shadow')\n    os.symlink('.', 'loop')\n"
            "    os.mkfifo('fifo')\n    s = socket.socket(socket.AF_UNIX)\n    s.bind('sock')\n    open('real', 'w').write('r')\n",
            return_files=True,
        )
        self.assertEqual([f["path"] for f in frame["files"]], ["real"])
        self.assertEqual(
            frame["skipped_files"],
            [
                {"path": "fifo", "reason": "not_a_regular_file"},
                {"path": "loop", "reason": "symlink"},
                {"path": "shadow", "reason": "symlink"},
                {"path": "sock", "reason": "not_a_regular_file"},
            ],
        )

    def test_a_name_the_service_refuses_is_skipped_never_the_answer(self):
        frame = file_job(
            "def main():\n    open('reports\\\\2024.csv', 'w').write('a')\n    open('ok.csv', 'w').write('b')\n"
            "    open('tab\\there', 'w').write('c')\n    open('del\\x7f', 'w').write('d')\n",
            return_files=True,
        )
        self.assertEqual([f["path"] for f in frame["files"]], ["ok.csv"])
        self.assertEqual(
            frame["skipped_files"],
            [{"path": "del\x7f", "reason": "name_refused"}, {"path": "reports\\2024.csv", "reason": "name_refused"},
             {"path": "tab\there", "reason": "name_refused"}],
        )
        self.assertFalse(frame["files_truncated"])

    def test_names_that_are_not_utf8_are_skipped_and_never_made_one(self):
        frame = file_job(
            "import os\ndef main():\n    for name in (b'caf\\xe9.txt', b'caf\\xe8.txt'):\n"
            "        os.close(os.open(name, os.O_WRONLY | os.O_CREAT))\n    open('caf\\ufffd.txt', 'w').write('real')\n",
            return_files=True,
        )
        # A file really named with U+FFFD is valid UTF-8 and comes back, alone.
        self.assertEqual([(f["path"], f["content"]) for f in frame["files"]], [("caf\ufffd.txt", "real")])
        self.assertEqual(frame["skipped_files"], [{"path": "caf\ufffd.txt", "reason": "name_not_utf8"}] * 2)

    def test_a_path_over_the_services_limit_is_skipped(self):
        frame = file_job(
            "import os\ndef main():\n    deep = '/'.join(['d' * 255] * 3 + ['d' * 251])\n    os.makedirs(deep)\n"
            "    open(deep + '/fits', 'w').write('x')\n    open(deep + '/' + 'n' * 10, 'w').write('x')\n",
            return_files=True,
        )
        deep = "/".join(["d" * 255] * 3 + ["d" * 251])
        self.assertEqual(len(deep + "/fits"), pyexec_files.MAX_PATH_BYTES)
        self.assertEqual([f["path"] for f in frame["files"]], [deep + "/fits"])
        self.assertEqual(frame["skipped_files"], [{"path": deep + "/" + "n" * 10, "reason": "path_too_long"}])

    def test_an_odd_name_a_pattern_does_not_want_is_not_listed(self):
        frame = file_job(
            "def main():\n    open('a\\\\b.log', 'w').write('a')\n    open('c\\\\d.csv', 'w').write('b')\n",
            return_files=["*.csv"],
        )
        self.assertEqual(frame["files"], [])
        self.assertEqual(frame["skipped_files"], [{"path": "c\\d.csv", "reason": "name_refused"}])

    def test_a_link_with_an_odd_name_is_skipped_for_its_name(self):
        frame = file_job("import os\ndef main():\n    os.symlink('/etc/passwd', 'a\\\\b')\n", return_files=True)
        self.assertEqual(frame["skipped_files"], [{"path": "a\\b", "reason": "name_refused"}])

    def test_refused_paths_are_the_services_rules(self):
        for path, reason in [
            ("ok/fine.csv", None), ("caf\u00e9/\ufffd.txt", None), ("a\\b", "name_refused"),
            ("a\nb", "name_refused"), ("a\x00b", "name_refused"), ("c1\x85", "name_refused"),
            ("nbsp\u00a0", None), (os.fsdecode(b"caf\xe9"), "name_not_utf8"),
            (os.fsdecode(b"caf\xe9\\"), "name_not_utf8"), ("x" * pyexec_files.MAX_PATH_BYTES, None),
            ("\u00e9" * 513, "path_too_long"),
        ]:
            with self.subTest(path=path):
                self.assertEqual(pyexec_files.refused_path(path), reason)

    def test_the_caps_leave_files_out_and_say_so(self):
        frame = file_job(
            "def main():\n    for i in range(6):\n        open(f'f{i}', 'w').write('x' * 100)\n",
            return_files=True,
        )
        self.assertEqual(len(frame["files"]), 4)
        self.assertTrue(frame["files_truncated"])
        frame = file_job("def main():\n    open('big', 'w').write('x' * 1001)\n", return_files=True)
        self.assertEqual(frame["files"], [])
        self.assertTrue(frame["files_truncated"])


class Mapping(unittest.TestCase):
    """README's table of the result mapping, row by row."""

    def result(self, expression, setup="", **job):
        script = f"import numpy as np, pandas as pd, datetime as dt, decimal\n{setup}\ndef main():\n    return {expression}\n"
        return run(script, limits={**LIMITS, "result_bytes": 1 << 20}, **job)[-1]

    def test_each_row(self):
        rows = [
            ("np.int64(7)", 7),
            ("np.float32(1.5)", 1.5),
            ("np.bool_(True)", True),
            ("np.array([[1, 2], [3, 4]], dtype=np.int64)", [[1, 2], [3, 4]]),
            ("np.array([2**62], dtype=np.int64)", [2**62]),
            ("pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})", [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]),
            ("pd.DataFrame({'a': [1]}, index=pd.Index(['r'], name='k'))", [{"k": "r", "a": 1}]),
            ("pd.Series([1, 2])", [1, 2]),
            ("pd.Series([1, 2], index=['x', 'y'])", {"x": 1, "y": 2}),
            ("pd.Index([3, 4])", [3, 4]),
            ("pd.Timestamp('2024-05-01 12:30')", "2024-05-01T12:30:00"),
            ("dt.datetime(2024, 5, 1, 12, 30, 5)", "2024-05-01T12:30:05"),
            ("dt.date(2024, 5, 1)", "2024-05-01"),
            ("dt.time(12, 30)", "12:30:00"),
            ("pd.Timedelta(minutes=2)", 120.0),
            ("dt.timedelta(seconds=1.5)", 1.5),
            ("decimal.Decimal('1.10')", "1.10"),
            ("pd.Series(pd.to_datetime(['2024-01-01 00:00:00', '2024-01-02 00:00:01']))", ["2024-01-01T00:00:00", "2024-01-02T00:00:01"]),
            ("pd.Series([1, None], dtype='Int64')", [1, None]),
        ]
        for expression, expected in rows:
            with self.subTest(expression):
                self.assertEqual(self.result(expression)["result"], expected)

    def test_describe_keeps_its_index(self):
        frame = self.result("pd.DataFrame({'a': [1.0, 2.0, 3.0]}).describe()")
        self.assertEqual([row["index"] for row in frame["result"]], ["count", "mean", "std", "min", "25%", "50%", "75%", "max"])
        self.assertEqual(frame["result"][1], {"index": "mean", "a": 2.0})

    def test_missing_values_become_null_and_say_where(self):
        frame = self.result("{'df': pd.DataFrame({'a': [1.5, None], 't': pd.to_datetime(['2024-01-01', None])}), 'x': float('inf'), 'na': pd.NA}")
        self.assertEqual(frame["result"], {"df": [{"a": 1.5, "t": "2024-01-01T00:00:00"}, {"a": None, "t": None}], "x": None, "na": None})
        self.assertEqual(frame["nulls"], {"count": 4, "paths": ["result['df'][1]['a']", "result['df'][1]['t']", "result['x']", "result['na']"]})

    def test_the_null_paths_are_capped_but_counted(self):
        frame = self.result("np.full(1000, np.nan)")
        self.assertEqual(frame["nulls"]["count"], 1000)
        self.assertEqual(len(frame["nulls"]["paths"]), pyexec_mapping.MAX_NULL_PATHS)

    def test_floats_and_ints_come_back_exactly(self):
        frame = self.result("pd.DataFrame({'f': [0.1 + 0.2, 1.0034247693404562e-18], 'i': [2**53 + 1, -1]})")
        self.assertEqual(frame["result"], [{"f": 0.1 + 0.2, "i": 2**53 + 1}, {"f": 1.0034247693404562e-18, "i": -1}])

    def test_what_has_no_mapping_is_still_refused(self):
        for expression, found in [("{1, 2}", ("result", "type", "set")), ("b'x'", ("result", "type", "bytes")),
                                  ("[np.complex128(1j)]", ("result[0]", "type", "numpy.complex128")),
                                  ("{(1, 2): 3}", ("result", "key", "tuple"))]:
            with self.subTest(expression):
                failure = self.result(expression)["failure"]
                self.assertEqual((failure["path"], failure["problem"], failure["type"]), found)

    def test_strict_result_keeps_plain_json(self):
        failure = self.result("np.int64(1)", strict_result=True)["failure"]
        self.assertEqual((failure["code"], failure["type"]), ("result_not_serializable", "numpy.int64"))
        failure = self.result("[float('nan')]", strict_result=True)["failure"]
        self.assertEqual(failure["problem"], "nan")

    def test_text_in_a_frame_cannot_forge_a_frame(self):
        forged = '"}\\n{\\"v\\": 2, \\"event\\": \\"returned\\", \\"result\\": \\"forged\\"}\\n'
        frame = self.result(f"pd.DataFrame({{'{forged}': ['{forged}'], '%s%r': [1]}})")
        row = frame["result"][0]
        self.assertEqual(len(row), 2)
        self.assertIn("forged", next(iter(row)))
        self.assertEqual(row["%s%r"], 1)

    def test_the_result_cap_holds_for_mapped_values(self):
        failure = run(
            "import pandas as pd\ndef main():\n    return pd.DataFrame({'a': range(1000)})\n", limits=LIMITS
        )[-1]["failure"]
        self.assertEqual(failure["code"], "result_too_large")


if __name__ == "__main__":
    unittest.main()
