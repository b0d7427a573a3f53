#!/usr/bin/env bash
# The main job: a complete local fleet migration with the embedded defaults. Installs nats-server
# when needed, builds, starts NATS and the five sample services with their agents, migrates them
# with deploy/demo/plan.toml, prints the report and cleans up. Exits 0 when the migration succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
echo "==> building"
cargo build --workspace --bins --quiet
exec target/debug/flotilla-demo
