#!/bin/sh
# Test script: fails with a long stderr that must not reach the client.
echo "secret-stderr-detail: $(printf 'x%.0s' $(seq 1 500))" >&2
exit 3
