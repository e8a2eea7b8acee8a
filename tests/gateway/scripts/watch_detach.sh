#!/bin/sh
# Test script: a watcher that leaves a detached child holding its stdout, then prints states.
dir="${COAPDEV_DATA_DIR:-.}"
setsid sleep 1000 &
echo $! >> "$dir/watch-descendant.pid"
echo $$ >> "$dir/watcher.pids"
pwd > "$dir/watcher.cwd"
i=0
while [ $i -lt 1000 ]; do
  i=$((i + 1))
  echo "state-$i"
  sleep 0.2
done
