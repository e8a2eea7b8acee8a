#!/bin/sh
# Test script: print the value file (the test changes it) and count runs.
echo run >> "$COAPDEV_STATE_DIR/runs.log"
cat "$COAPDEV_STATE_DIR/value.txt"
