#!/usr/bin/env bash
# The whole test suite: unit tests, the wire-contract checks, and the end-to-end tests that run
# the real binaries against a real nats-server and real sample services.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
# The conformance test (tests/tests/conformance.rs) runs a Python client against a real agent.
FLOTILLA_CONFORMANCE_PYTHON=$(scripts/ensure-python-deps.sh)
export FLOTILLA_CONFORMANCE_PYTHON
# cargo-nextest runs the test binaries side by side (.config/nextest.toml says how many, and
# which heavy tests are kept apart); `cargo test` would run the 90 binaries one after another.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing: installing it from crates.io (a few minutes, once)" >&2
  cargo install cargo-nextest --locked --quiet
fi
cargo build --workspace --bins --quiet
cargo nextest run --workspace --no-fail-fast "$@"
# nextest does not run documentation tests.
cargo test --workspace --doc --quiet
