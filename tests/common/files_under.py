# Shared by the escape cases that search the temp directories (tests/common/escape_cases.rs).
import os


def files_under(root, depth=8):
    # Iterative and shallow: a script's secret is near the top, and a host's deep trees (a
    # checkout, a 4,000-deep tree another case builds) must neither recurse nor eat the time.
    stack = [(root, 0)]
    while stack:
        top, level = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if level < depth:
                        stack.append((entry.path, level + 1))
                else:
                    yield entry.path
            except OSError:
                pass
