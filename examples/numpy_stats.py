# numpy: statistics of a small array, returned as plain numbers.
# expect: 200
import numpy as np


def main():
    values = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    print(f"{values.size} values, largest {values.max()}")
    # float() and .tolist() turn numpy's values into plain Python numbers and lists.
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "sorted": np.sort(values).tolist(),
    }
