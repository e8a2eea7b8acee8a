"""Test script: keep the request as the script sees it (stdin and environment); print nothing."""

import json
import os
import sys

data = sys.stdin.buffer.read()
seen = {
    "stdin": data.hex(),
    "content_format": os.environ.get("COAPDEV_CONTENT_FORMAT", ""),
    "query": os.environ.get("COAPDEV_QUERY", ""),
    "method": os.environ.get("COAPDEV_METHOD", ""),
}
with open(os.path.join(os.environ["COAPDEV_DATA_DIR"], "request.json"), "w") as f:
    json.dump(seen, f)
