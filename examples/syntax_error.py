# A syntax error: the script does not compile (the colon after main() is missing).
# expect: 400 syntax_error
def main()
    return 1
