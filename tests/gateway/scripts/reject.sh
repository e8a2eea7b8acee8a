#!/bin/sh
# Test script: rejects its input (exit 65 = EX_DATAERR).
echo "payload must be a number"
exit 65
