#!/bin/sh
# A persistent handler in plain sh (docs/gateway.md, "Persistent handlers"): one process
# answers every request of its resource, one JSON line in, one JSON line out.
#   GET  -> the counter, as text
#   POST -> adds one, answers the new value
#   PUT  -> sets it to the number in the payload (4.00 if it is not one)
# The gateway writes "id" first and "method" second, always, so sed can pick them out
# without a JSON parser; payloads are base64.  Requests are answered one after the other.
set -u
count=0

answer() { # id code text
    printf '{"id":%s,"code":"%s","content_format":0,"payload":"%s"}\n' \
        "$1" "$2" "$(printf '%s' "$3" | base64 | tr -d '\n')"
}

while IFS= read -r line; do
    id=$(printf '%s\n' "$line" | sed -n 's/^{"id":\([0-9]*\),.*/\1/p')
    method=$(printf '%s\n' "$line" | sed -n 's/^{"id":[0-9]*,"method":"\([A-Z]*\)".*/\1/p')
    payload=$(printf '%s\n' "$line" | sed -n 's/.*"payload":"\([A-Za-z0-9+\/=]*\)".*/\1/p')
    case "$method" in
        GET) answer "$id" 2.05 "$count" ;;
        POST) count=$((count + 1)); answer "$id" 2.01 "$count" ;;
        PUT)
            value=$(printf '%s' "$payload" | base64 -d 2>/dev/null)
            case "$value" in
                '' | *[!0-9]*) answer "$id" 4.00 "send a whole number" ;;
                *) count=$value; answer "$id" 2.04 "$count" ;;
            esac ;;
        *) answer "$id" 4.05 "not handled" ;;
    esac
done
