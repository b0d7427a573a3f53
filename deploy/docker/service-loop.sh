#!/bin/sh
# flotilla-service-loop PID_FILE PROGRAM [ARGS...]
#
# PID 1 of a service container whose Flotilla agent runs in a sidecar container (agent config
# `supervisor = "external"`). It runs PROGRAM, writes its PID to PID_FILE (on the volume the two
# containers share), and starts it again whenever it exits. The agent restarts the service by
# signalling that PID (flotilla-restart-service), which it can do because the two containers
# share a PID namespace (compose `pid: service:…`, Kubernetes `shareProcessNamespace: true`).
# SIGTERM or SIGINT (docker stop, pod deletion) stops the service and the loop.
#
# Demo only: when FLOTILLA_SEED_FROM and FLOTILLA_SEED_TO are set and FLOTILLA_SEED_TO does not
# exist yet, the directory FLOTILLA_SEED_FROM is copied there first (the legacy layout).
set -u

if [ "$#" -lt 2 ]; then
  echo "usage: flotilla-service-loop PID_FILE PROGRAM [ARGS...]" >&2
  exit 2
fi
pid_file=$1
shift

if [ -n "${FLOTILLA_SEED_FROM:-}" ] && [ -n "${FLOTILLA_SEED_TO:-}" ] && [ ! -e "$FLOTILLA_SEED_TO" ]; then
  mkdir -p "$(dirname "$FLOTILLA_SEED_TO")"
  # -L and the `..*` clean-up: a Kubernetes ConfigMap volume holds symlinks into `..data`.
  rm -rf "$FLOTILLA_SEED_TO.seeding"
  cp -RL "$FLOTILLA_SEED_FROM" "$FLOTILLA_SEED_TO.seeding" \
    && rm -rf "$FLOTILLA_SEED_TO.seeding"/..?* \
    && mv "$FLOTILLA_SEED_TO.seeding" "$FLOTILLA_SEED_TO"
  echo "flotilla-service-loop: seeded $FLOTILLA_SEED_TO from $FLOTILLA_SEED_FROM" >&2
fi
mkdir -p "$(dirname "$pid_file")"

stopping=0
child=
stop() {
  stopping=1
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap stop TERM INT

# A service stopped by a signal (the agent's restart) or that exited cleanly starts again at
# once. After a failure the loop waits a little longer each time (0.2 s, 1 s, then 5 s), so a
# service that cannot start does not spin; one that ran for 10 s or more resets the wait.
delay=0
while [ "$stopping" = 0 ]; do
  started=$(date +%s)
  "$@" &
  child=$!
  echo "$child" > "$pid_file.tmp" && mv "$pid_file.tmp" "$pid_file"
  # `wait` returns early when a trapped signal arrives: wait until the child is really gone.
  wait "$child"
  status=$?
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    status=$?
  done
  rm -f "$pid_file"
  child=
  [ "$stopping" = 1 ] && break
  if [ "$status" = 0 ] || [ "$status" = 143 ] || [ $(( $(date +%s) - started )) -ge 10 ]; then
    delay=0
  elif [ "$delay" = 0 ]; then
    delay=0.2
  elif [ "$delay" = 0.2 ]; then
    delay=1
  else
    delay=5
  fi
  echo "flotilla-service-loop: $1 exited with status $status; starting it again in ${delay}s" >&2
  sleep "$delay"
done
exit 0
