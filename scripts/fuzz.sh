#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/<name>_fuzz.cpp, ASan+UBSan) for SECONDS each (default 60),
# starting from the committed seeds (fuzz/corpus/<name>/) plus what earlier runs found
# (build-fuzz/fuzz/corpus_<name>/). Prints executions per target; exits non-zero if any target
# crashed (the input is saved as build-fuzz/fuzz/crash-<name>-*; make it a regression test).
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 600 safetensors config
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
JOBS=${JOBS:-$(nproc)}
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (scripts/setup.sh installs clang)" >&2; exit 1; }
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHYMBA_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz -j"$JOBS" --target fuzzers
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/*_fuzz.cpp; do n=$(basename "$f" .cpp); targets+=("${n%_fuzz}"); done
fi
total=0 failed=()
for n in "${targets[@]}"; do
  corpus=build-fuzz/fuzz/corpus_$n log=build-fuzz/fuzz/$n.log
  mkdir -p "$corpus"
  rc=0
  ASAN_OPTIONS=detect_leaks=0 "build-fuzz/fuzz/${n}_fuzz" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 -artifact_prefix="build-fuzz/fuzz/crash-$n-" "$corpus" "fuzz/corpus/$n" \
    >"$log" 2>&1 || rc=$?
  runs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)
  runs=${runs:-0}
  total=$((total + runs))
  if [ $rc -ne 0 ]; then
    failed+=("$n")
    printf '%-20s CRASH after %s executions (log %s)\n' "$n" "$runs" "$log"
  else
    printf '%-20s %12s executions, 0 crashes\n' "$n" "$runs"
  fi
done
echo "fuzz.sh: $total executions in total, ${#failed[@]} target(s) crashed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
