#!/bin/sh
# Test script: a watcher printing a new state every 0.3 s.
echo $$ >> "$COAPDEV_DATA_DIR/watcher.pids"
i=0
while [ $i -lt 100 ]; do
  i=$((i + 1))
  echo "state-$i"
  sleep 0.3
done
