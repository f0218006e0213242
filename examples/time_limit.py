# Past the time limit (30 s by default): the script is stopped; what it printed is kept.
# expect: 400 time_limit_exceeded
import time


def main():
    print("going to sleep")
    time.sleep(3600)
