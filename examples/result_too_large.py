# A result over the result limit (16 MiB of JSON by default).
# expect: 400 result_too_large
def main():
    return "x" * (17 * 1024 * 1024)
