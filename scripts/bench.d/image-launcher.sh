#!/bin/bash
# The original design's imageLauncher (Ramon Leon, "Scaling Seaside: More
# Advanced Load Balancing And Publishing", 2008): the baseline of
# scripts/bench, as a RewriteMap prg: program.
#
#   bash image-launcher.sh WORKERS USER VM [VM-ARGS...]
#
# Adapted as little as the benchmark needs; everything else is the original
# (nc -z localhost, the kill of the recorded pid, the pid file, the
# `sleep 1` polling loop, the answer):
# - the pid files live in WORKERS (the original: workers/, relative to
#   Apache's working directory);
# - the VM is `VM VM-ARGS... --port PORT` (demo-vm) instead of
#   `squeak -mmap 150m -headless ... port PORT`;
# - `sudo -u www-data` is `setpriv` to USER (or nothing with USER `-`):
#   setpriv execs the VM, so the pid file holds the VM's pid, as the
#   original meant (sudo's pid forwarded signals to it), and there is no
#   PAM session per launch;
# - the VM's stdout and stderr go to WORKERS/squeak.PORT.log: the original
#   VM inherited the map's stdout, Apache's pipe, where a single line from
#   a VM would desynchronise the map (demo-vm logs on stderr).
# The loop is kept as written, unquoted variables and all:
# shellcheck disable=SC2086,SC2162,SC2181
WORKERS=$1 RUNAS=$2
shift 2
if [ "$RUNAS" = - ]; then
  SUDO=()
else
  SUDO=(setpriv --reuid="$RUNAS" --regid="$(id -g "$RUNAS")" --init-groups)
fi
while read ARG; do
  nc -z localhost $ARG
  if (( $? != 0 )); then
    #kill any hung images
    if [ -f $WORKERS/squeak.$ARG ]; then
      cat $WORKERS/squeak.$ARG | xargs -r kill
    fi
    #launch the VM dropping permissions to a non root user
    "${SUDO[@]}" "$@" --port $ARG >>$WORKERS/squeak.$ARG.log 2>&1 &
    #log worker process id
    echo $! > $WORKERS/squeak.$ARG
    sleep 1
    nc -z localhost $ARG
    while (( $? != 0 )); do
      sleep 1
      nc -z localhost $ARG
    done
  fi
  echo $ARG
done
