"""Test script: prints far more than any output limit."""

import sys

chunk = b"y" * 65536
for _ in range(1000):
    sys.stdout.buffer.write(chunk)
