# A result JSON cannot carry: a set (return sorted(tags) or list(tags) instead).
# expect: 400 result_not_serializable
def main():
    tags = {"red", "green", "blue"}
    return {"count": len(tags), "tags": tags}
