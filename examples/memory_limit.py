# Past the memory limit (512 MiB by default): the script is stopped.
# expect: 400 memory_limit_exceeded
def main():
    hog = b"x" * (1024 * 1024 * 1024)
    return len(hog)
