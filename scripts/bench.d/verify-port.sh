#!/bin/bash
# The original design's verifyPort (Ramon Leon, "Scaling Seaside: More
# Advanced Load Balancing And Publishing", 2008), unchanged: the baseline of
# scripts/bench. Run as `bash verify-port.sh` (a RewriteMap prg: program).
# Kept as written, unquoted variables and all:
# shellcheck disable=SC2086,SC2162,SC2181
while read ARG; do
  nc -z localhost $ARG
  if [ $? = 0 ]; then echo open$ARG; else echo closed; fi
done
