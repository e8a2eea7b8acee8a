#!/bin/sh
# Test script: text with terminal escapes and a trailing newline.
printf 'hello \033[2J\033]0;pwned\007world\n'
