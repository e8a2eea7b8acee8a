"""Test script: keep the payload exactly as received; print its length and hash."""

import hashlib
import json
import os
import sys

data = sys.stdin.buffer.read()
with open(os.path.join(os.environ["COAPDEV_DATA_DIR"], "received.bin"), "wb") as f:
    f.write(data)
print(json.dumps({"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
