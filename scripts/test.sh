#!/usr/bin/env bash
# The whole test suite: unit tests, the wire-contract checks, and the end-to-end tests that run
# the real binaries against a real nats-server and real sample services.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast "$@"
