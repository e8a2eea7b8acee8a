#!/bin/sh
# Test script: counts its runs (one line each in runs-NAME.txt), waits $2 seconds,
# then prints the stored value and who asked.  PUT (with $1 = put) stores stdin.
name=$(basename "$COAPDEV_PATH")
if [ "$1" = put ]; then
    cat > "$COAPDEV_DATA_DIR/value-$name.txt"
    exit 0
fi
echo "$$" >> "$COAPDEV_DATA_DIR/runs-$name.txt"
sleep "$2"
value=$(cat "$COAPDEV_DATA_DIR/value-$name.txt" 2>/dev/null || echo unset)
echo "$value for ${COAPDEV_CLIENT_NAME:-anyone} ($COAPDEV_QUERY)"
