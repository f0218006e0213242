# pandas: group a small table and return the totals.
# expect: 200
import pandas as pd


def main():
    sales = pd.DataFrame(
        {
            "region": ["north", "south", "north", "east", "south"],
            "units": [10, 4, 6, 7, 9],
        }
    )
    totals = sales.groupby("region")["units"].sum()
    print(totals.to_string())
    return {
        "total": int(sales["units"].sum()),
        "by_region": {region: int(units) for region, units in totals.items()},
    }
