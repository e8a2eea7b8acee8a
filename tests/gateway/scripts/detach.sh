#!/bin/sh
# Test script: answers at once but leaves a descendant behind, appending its pid to descendant.pid.
#   keep-stdout: a child in the script's process group keeps stdout open
#   setsid:      a child in a session of its own keeps stdout open
#   daemon:      a grandchild in its own session, stdio on /dev/null (a classic daemon)
mode="$1"
dir="${COAPDEV_DATA_DIR:-.}"
case "$mode" in
  keep-stdout) sleep 1000 & echo $! >> "$dir/descendant.pid" ;;
  setsid) setsid sleep 1000 & echo $! >> "$dir/descendant.pid" ;;
  daemon) ( setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! >> "$dir/descendant.pid" ) ;;
esac
echo "answered $mode"
