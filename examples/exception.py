# An exception in main(): its type, message and traceback come back, with what was printed.
# expect: 400 script_exception
def main():
    prices = {"apple": 3}
    print("looking up a pear")
    return prices["pear"]
