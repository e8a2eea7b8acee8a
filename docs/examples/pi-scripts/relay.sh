#!/bin/sh
# relay.sh get|set LINE -- drive a relay on a GPIO line with libgpiod 1.6.
# `set` reads the desired state on stdin: on/off, 1/0, true/false, {"on": ...}.
# Prints {"on": true|false}.  Exit 65 tells coapdev-gateway the input was wrong.
set -eu
command=$1
line=$2
case "$line" in *[!0-9]*|'') echo "bad line number"; exit 2 ;; esac

if [ "$command" = get ]; then
  value=$(gpioget gpiochip0 "$line")
else
  input=$(head -c 64 | tr -d ' \n\r\t"{}' | tr 'A-Z' 'a-z')
  case "$input" in
    on|1|true|on:true|on:1) value=1 ;;
    off|0|false|on:false|on:0) value=0 ;;
    *) echo "send on or off"; exit 65 ;;
  esac
  gpioset gpiochip0 "$line=$value"
fi
[ "$value" = 1 ] && echo '{"on": true}' || echo '{"on": false}'
