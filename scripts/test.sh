#!/usr/bin/env bash
# The whole test suite: unit tests, the wire-contract checks, and the end-to-end tests that run
# the real binaries against a real nats-server and real sample services.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
# The conformance test (tests/tests/conformance.rs) runs a Python client against a real agent.
FLOTILLA_CONFORMANCE_PYTHON=$(scripts/ensure-python-deps.sh)
export FLOTILLA_CONFORMANCE_PYTHON
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast "$@"
