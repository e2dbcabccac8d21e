#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: packages, build, tokenizer fixture, ctest
# (GoogleTest + the float64 Python reference tests), then the bad-input tests again under
# AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
phase() { echo "== test.sh: $1 done at $((SECONDS - START)) s" >&2; }
scripts/setup.sh
phase setup
JOBS=${JOBS:-$(nproc)}
# ctest runs JOBS tests at once, each with up to nproc OpenMP threads: libgomp's spinning waits
# then burn the cores the other tests need (measured: two tests side by side under load took
# 152-169 s, 110-116 s with passive waits). Only the test run is affected, not the engine's default.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
phase "Release build"
tests/fetch_tokenizer.sh build/tokenizer
export HYMBA_TOKENIZER_DIR="$PWD/build/tokenizer"
ctest --test-dir build --output-on-failure -j"$JOBS"
phase "Release tests"

# Bad input must give a clear error, never a crash: the same tests (and the server and the
# prompt cache, which read what clients and files give them) under the sanitizers.
SANITIZED='Bad|Reject|Invalid|bad_input|prompt_cache|server'  # test names; only their files are built
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHYMBA_ASAN=ON \
  -DHYMBA_TEST_NAME_FILTER="$SANITIZED" >/dev/null
# One target per call: with Makefiles, two --target's run two sub-makes at once that both build
# the library, compiling its files twice and racing on the objects.
cmake --build build-asan -j"$JOBS" --target hymba_cli
cmake --build build-asan -j"$JOBS" --target hymba_tests
phase "sanitizer build"
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$JOBS" -R "$SANITIZED"
phase "sanitizer tests"

# Every parser of outside input under libFuzzer (clang, ASan+UBSan): a few seconds per target from
# the committed seeds (scripts/fuzz.sh runs them for longer). Only the parsing sources are built.
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHYMBA_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz -j"$JOBS" --target fuzzers
ctest --test-dir build-fuzz --output-on-failure -j"$JOBS" -R '^fuzz_'
phase "fuzz smoke"
