"""Files in and out of the script's working directory (see harness.py). Part of the harness,
installed beside it."""

import os

from pyexec_mapping import SURROGATES

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
