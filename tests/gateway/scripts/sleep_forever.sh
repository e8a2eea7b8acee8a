#!/bin/sh
# Test script: never finishes; leaves a child behind; records both pids.
echo $$ > "$COAPDEV_DATA_DIR/sleeper.pid"
sleep 1000 &
echo $! > "$COAPDEV_DATA_DIR/sleeper-child.pid"
wait
