#!/usr/bin/env bash
# Prints the path of a Python that has the conformance client's pinned dependencies
# (tests/conformance/requirements.txt), installing them from PyPI into .tools/conformance-venv
# when that venv is missing or was made from another requirements file.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.tools/conformance-venv"
requirements="$repo/tests/conformance/requirements.txt"
stamp="$venv/requirements.sha256"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)

if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
  echo "$venv/bin/python"
  exit 0
fi

echo "installing the conformance client's dependencies into $venv" >&2
python3 -m venv "$venv" >&2 2>/dev/null || {
  echo "python3 -m venv failed: installing python3-venv with apt" >&2
  apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
  python3 -m venv "$venv" >&2
}
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
echo "$wanted" >"$stamp"
echo "$venv/bin/python"
