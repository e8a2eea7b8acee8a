"""Test script: print the request's environment as JSON."""

import json
import os
import sys

sys.stdin.buffer.read()
print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("COAPDEV_")}))
