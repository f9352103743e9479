#!/usr/bin/env bash
# herald's whole test suite, as CI runs it (`.ci/run` calls this script).
#
# Installs what the tests need (Debian packages: redis-server and
# nats-server for the cluster tests, chromium for the browser test; npm
# packages with npm ci), then runs, in order: formatting, clippy
# with warnings as errors, the docs with warnings as errors, every unit,
# integration and doc test in the workspace, the JavaScript client tests
# (the phoenix and ws packages), the browser test of the demo page
# (playwright-core driving Debian's chromium), and a short smoke run of each
# fuzz target. Set HERALD_FUZZ_SECONDS to change the per-target fuzz time
# (default 20; 0 skips fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests need, installed only when missing: the brokers
# of the cluster tests and Chromium for the browser test.
export PATH="$PATH:/usr/sbin:/sbin"
debian_packages=()
command -v redis-server >/dev/null 2>&1 || debian_packages+=(redis-server)
command -v nats-server >/dev/null 2>&1 || debian_packages+=(nats-server)
command -v chromium >/dev/null 2>&1 || debian_packages+=(chromium)
if [ "${#debian_packages[@]}" -gt 0 ]; then
  step "installing Debian packages: ${debian_packages[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${debian_packages[@]}" >/dev/null
fi

step "formatting"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "tests"
cargo test --workspace --locked

step "JavaScript client tests (the phoenix npm package under Node.js)"
cargo build -p herald-tests --bin channels-test-server --locked --quiet
cargo build -p herald --bin herald --locked --quiet
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
HERALD_TEST_SERVER="$PWD/target/debug/channels-test-server" HERALD_BIN="$PWD/target/debug/herald" \
  npm test --prefix tests/js

step "browser test (the demo page in headless Chromium, two pages)"
cargo build -p herald --bin herald --example slack --locked --quiet
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
HERALD_BIN="$PWD/target/debug/herald" SLACK_BIN="$PWD/target/debug/examples/slack" \
  npm test --prefix tests/browser
echo "screenshots: tests/browser/artifacts/demo.png, slack.png, admin.png"

fuzz_seconds="${HERALD_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" -gt 0 ]; then
  step "fuzz smoke run (${fuzz_seconds}s per target)"
  if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "the nightly toolchain is required for fuzzing (rustup toolchain install nightly)" >&2
    exit 1
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
  fi
  (
    cd fuzz
    for target in $(cargo +nightly fuzz list); do
      mkdir -p "corpus/$target"
      log="$(mktemp)"
      if ! cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$fuzz_seconds" -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed; the crashing input is under fuzz/artifacts/$target" >&2
        exit 1
      fi
      echo "$target: $(grep -E '^Done [0-9]+ runs' "$log" || echo 'finished')"
      rm -f "$log"
    done
  )
fi

step "all checks passed"
