"""Test hook for observe --exec: append one JSON line per call to $HOOK_LOG."""

import json
import os
import sys

record = {
    "argv": sys.argv[1:],
    "stdin": sys.stdin.buffer.read().decode("utf-8", "replace"),
    "event": os.environ.get("COAPDEV_EVENT", ""),
    "code": os.environ.get("COAPDEV_CODE", ""),
}
with open(os.environ["HOOK_LOG"], "a") as f:
    f.write(json.dumps(record) + "\n")
