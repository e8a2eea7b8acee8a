#!/bin/sh
# Test script: rejects its input with a diagnostic full of terminal escapes.
printf 'bad \033[31minput\r\n'
exit 65
