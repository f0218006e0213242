"""`make bench`'s measure of the result mapping (README, "Results: numpy, pandas, dates"): the
harness's encoder against pandas' own `df.to_json(orient="records")` on the same 100,000-row
DataFrame, in the sandbox's Python, alternating the two, median of each. Prints one JSON line."""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "harness"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import harness  # noqa: E402

ROWS, RUNS = 100_000, 9
rng = np.random.default_rng(7)
prices = rng.normal(100, 15, ROWS)
prices[::50] = np.nan  # missing values, as real data has
frame = pd.DataFrame({
    "id": np.arange(ROWS),
    "price": prices,
    "quantity": rng.integers(1, 1000, ROWS),
    "region": rng.choice(["north", "south", "east", "west"], ROWS),
    "when": pd.date_range("2024-01-01", periods=ROWS, freq="min"),
    "paid": rng.random(ROWS) < 0.9,
})


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


pandas_runs, ours_runs = [], []
for _ in range(RUNS):
    pandas_runs.append(timed(lambda: frame.to_json(orient="records")))
    ours_runs.append(timed(lambda: harness.ResultEncoder().encode(frame)))
encoded = harness.ResultEncoder().encode(frame)
assert len(json.loads(encoded)) == ROWS
pandas_ms = statistics.median(pandas_runs) * 1000
ours_ms = statistics.median(ours_runs) * 1000
print(json.dumps({
    "rows": ROWS, "columns": len(frame.columns), "runs": RUNS,
    "to_json_ms": round(pandas_ms, 1), "encoder_ms": round(ours_ms, 1),
    "ratio": round(ours_ms / pandas_ms, 2), "bytes": len(encoded.encode()),
}))
