"""Demo light for the default gateway config: `light.py get|set|toggle`.

State lives in $COAPDEV_DATA_DIR/light-state.json (written atomically).
`set` reads the request payload on stdin: {"on": true}, true/false, 1/0, or
the words on, off, toggle.  Prints the new state as JSON.  Exit status 65
rejects input it does not understand (the client gets 4.00).
"""

import json
import os
import sys
import tempfile

STATE = os.path.join(os.environ.get("COAPDEV_DATA_DIR", "."), "light-state.json")


def read() -> bool:
    try:
        with open(STATE) as f:
            return bool(json.load(f).get("on", False))
    except (OSError, ValueError, AttributeError):
        return False


def write(on: bool) -> None:
    directory = os.path.dirname(os.path.abspath(STATE))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".light-")
    with os.fdopen(fd, "w") as f:
        json.dump({"on": on}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, STATE)


def parse(payload: bytes, current: bool):
    from coapdev.errors import PayloadError
    from coapdev.payload import parse_switch

    text = payload.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    try:
        return parse_switch(value, current)
    except PayloadError:
        return None


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "get"
    on = read()
    if command == "set":
        wanted = parse(sys.stdin.buffer.read(4096), on)
        if wanted is None:
            print('send {"on": true|false}, or the words on, off or toggle')
            return 65
        on = wanted
        write(on)
    elif command == "toggle":
        on = not on
        write(on)
    elif command != "get":
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    print(json.dumps({"on": on}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
