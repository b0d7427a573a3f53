#!/bin/sh
# flotilla-restart-service PID_FILE [TIMEOUT_SECONDS]
#
# The `restart_command` of an agent whose service runs in another container under
# flotilla-service-loop (see service-loop.sh): sends SIGTERM to the PID in PID_FILE (SIGKILL
# after TIMEOUT_SECONDS, default 10), then waits until the loop has started the service again
# (a new, live PID in PID_FILE). The agent then waits for the service's health URL. Exits 1 when
# the service does not come back within TIMEOUT_SECONDS.
set -u

if [ "$#" -lt 1 ]; then
  echo "usage: flotilla-restart-service PID_FILE [TIMEOUT_SECONDS]" >&2
  exit 2
fi
pid_file=$1
timeout=${2:-10}
ticks=$((timeout * 10))

old=$(cat "$pid_file" 2>/dev/null || true)
if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
  kill -TERM "$old"
  n=0
  while kill -0 "$old" 2>/dev/null; do
    n=$((n + 1))
    if [ "$n" -ge "$ticks" ]; then
      echo "flotilla-restart-service: PID $old ignored SIGTERM for ${timeout}s, killing it" >&2
      kill -KILL "$old" 2>/dev/null
    fi
    sleep 0.1
  done
fi

n=0
while :; do
  new=$(cat "$pid_file" 2>/dev/null || true)
  if [ -n "$new" ] && [ "$new" != "$old" ] && kill -0 "$new" 2>/dev/null; then
    exit 0
  fi
  n=$((n + 1))
  if [ "$n" -ge "$ticks" ]; then
    echo "flotilla-restart-service: the service did not start again within ${timeout}s (no new PID in $pid_file)" >&2
    exit 1
  fi
  sleep 0.1
done
