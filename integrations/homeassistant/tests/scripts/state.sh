#!/bin/sh
# state.sh NAME get [DEFAULT] | set | press -- a test resource whose state is a file
# in the gateway's data directory (COAPDEV_DATA_DIR), so tests can read what a request did and
# change what the device reports.
set -eu
file="$COAPDEV_DATA_DIR/$1"
case "$2" in
  get) if [ -f "$file" ]; then cat "$file"; else printf '%s\n' "${3:-}"; fi ;;
  set) head -c 64 > "$file.new" && mv "$file.new" "$file" && cat "$file" ;;
  press) echo pressed >> "$file" ;;
  *) exit 2 ;;
esac
