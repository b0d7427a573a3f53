#!/usr/bin/env bash
# The dependency policy in deny.toml: duplicate versions, licenses and sources always; security
# advisories when the RustSec database can be fetched. That database is a git repository on
# github.com, which some build machines cannot reach (crates.io yes, github.com no): there the
# advisory check is skipped with a warning rather than failing every build for a network it does
# not have. FLOTILLA_REQUIRE_ADVISORIES=1 makes an unreachable database an error (for a CI that
# has the network and must not skip silently).
set -euo pipefail
cd "$(dirname "$0")/.."

PINNED_VERSION="0.20.2"
bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"

# The upstream release binary (seconds) when github.com answers; else a build from crates.io
# (about 5 CPU-minutes, 28 wall-clock minutes on a busy 2-core machine).
install_cargo_deny() {
  local target="x86_64-unknown-linux-musl" tmp
  [[ $(uname -m) == aarch64 ]] && target="aarch64-unknown-linux-musl"
  local name="cargo-deny-$PINNED_VERSION-$target"
  local url="https://github.com/EmbarkStudios/cargo-deny/releases/download/$PINNED_VERSION/$name.tar.gz"
  tmp=$(mktemp -d)
  if curl -fsSL --connect-timeout 10 --max-time 120 "$url" -o "$tmp/deny.tar.gz" 2>/dev/null &&
    tar -xzf "$tmp/deny.tar.gz" -C "$tmp" && "$tmp/$name/cargo-deny" --version >/dev/null; then
    mkdir -p "$bin_dir" && install -m 0755 "$tmp/$name/cargo-deny" "$bin_dir/cargo-deny"
    echo "installed cargo-deny $PINNED_VERSION (release binary) into $bin_dir" >&2
  else
    echo "no cargo-deny release binary reachable: building $PINNED_VERSION from crates.io" >&2
    cargo install cargo-deny --version "$PINNED_VERSION" --locked --quiet
  fi
  rm -rf "$tmp"
}

if ! cargo deny --version >/dev/null 2>&1; then
  install_cargo_deny
fi

cargo deny check bans licenses sources
if cargo deny fetch db >/dev/null 2>&1; then
  cargo deny check advisories
elif [[ ${FLOTILLA_REQUIRE_ADVISORIES:-} == 1 ]]; then
  echo "error: the RustSec advisory database cannot be fetched (FLOTILLA_REQUIRE_ADVISORIES=1)" >&2
  exit 1
else
  echo "warning: the RustSec advisory database cannot be fetched: advisories not checked" >&2
fi
