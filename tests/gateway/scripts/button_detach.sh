#!/bin/sh
# Test script: a pairing button command that detaches a child, presses once, then waits.
dir="${COAPDEV_DATA_DIR:-.}"
setsid sleep 1000 &
echo $! >> "$dir/button-descendant.pid"
pwd > "$dir/button.cwd"
echo pressed
exec sleep 1000
