# No main(): the script defines a function, but not a top-level main().
# expect: 400 no_main
def run():
    return "never called"
