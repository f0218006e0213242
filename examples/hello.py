# Hello, world: print a line and return a JSON object.
# expect: 200
def main():
    print("Hello, World!")
    return {"message": "Hello from main"}
