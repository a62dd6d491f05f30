#!/usr/bin/env bash
# Builds kip and runs it on the example stack in examples/shop: checks it and prints its resource graph.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kip/target}"
cargo build --release --locked -p kip-cli
kip="$CARGO_TARGET_DIR/release/kip"
"$kip" -C examples/shop lint
"$kip" -C examples/shop graph
echo
echo "kip is at $kip"
