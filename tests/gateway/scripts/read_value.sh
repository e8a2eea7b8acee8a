#!/bin/sh
# Test script: print the value file (the test changes it) and count runs.
echo run >> "$COAPDEV_DATA_DIR/runs.log"
cat "$COAPDEV_DATA_DIR/value.txt"
