#!/bin/sh
# Test script: never finishes; leaves a child behind; records both pids.
echo $$ > "$COAPDEV_STATE_DIR/sleeper.pid"
sleep 1000 &
echo $! > "$COAPDEV_STATE_DIR/sleeper-child.pid"
wait
