#!/usr/bin/env bash
# The README's test command: installs dependencies, builds everything, and
# runs every test suite. GPU tests skip cleanly without a GPU.
#   1. Release build of everything (CUDA too when nvcc is present) + ctest.
#   2. deploy/ (tests/ops): every dashboard, recording-rule and alert expression
#      on a real Prometheus scraping the real servers, promtool check/test
#      rules, the rendered manifests against the Kubernetes schemas, and the
#      Dockerfile's lint; and seer-decode's OpenAI API through the official
#      `openai` npm client, against `seer run`.
#   3. The engine tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
#   4. Every *_fuzz.cc under libFuzzer for a bounded time (the checkpoint and
#      gate-file parsers, JSON, the tokenizer's loader and encoder, chat
#      templates).
# SEER_SKIP_SANITIZE=1 / SEER_SKIP_FUZZ=1 skip stages 3 / 4 (for quick local runs).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh

jobs=$(nproc)
echo "== [1/4] release build + tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
logs="$(mktemp -d)"
ctest --test-dir build --output-on-failure -j "$jobs" 2>&1 | tee "$logs/release.log"

echo "== [2/4] deploy/: Prometheus, promtool, manifests, Dockerfile; the OpenAI API with the openai client"
# Pinned by tests/ops/package-lock.json (no registry addresses in it).
(cd tests/ops && npm ci --no-audit --no-fund --loglevel=error)
node tests/ops/check_observability.mjs build/bin
node tests/ops/check_openai.mjs build/bin
node tests/ops/check_manifests.mjs

if [ "${SEER_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== [3/4] engine tests under ASan + UBSan"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSEER_SANITIZE=ON \
        -DSEER_ENABLE_SERVER=OFF -DSEER_ENABLE_CUDA=OFF
  cmake --build build-asan -j "$jobs" --target seer_engine_tests seer
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" 2>&1 | tee "$logs/asan.log"
fi

if [ "${SEER_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== [4/4] libFuzzer on the file parsers, tokenizer and chat templates"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DSEER_FUZZ=ON -DSEER_ENABLE_TESTS=ON -DSEER_ENABLE_SERVER=OFF -DSEER_ENABLE_CUDA=OFF
  fuzzers=()
  # Every *_fuzz.cc beside the parser it fuzzes.
  while IFS= read -r src; do
    fuzzers+=("$(basename "$src" .cc)")
  done < <(git ls-files '*_fuzz.cc' 2>/dev/null || find . -name '*_fuzz.cc' -not -path './build*')
  if [ ${#fuzzers[@]} -gt 0 ]; then
    cmake --build build-fuzz -j "$jobs" --target "${fuzzers[@]}"
    for f in "${fuzzers[@]}"; do
      corpus="build-fuzz/corpus-$f"
      mkdir -p "$corpus"
      seeds="tests/fuzz_seeds/${f%_fuzz}"
      [ -d "$seeds" ] && cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
      echo "-- $f (${SEER_FUZZ_SECONDS:-60} s)"
      "build-fuzz/bin/$f" -max_total_time="${SEER_FUZZ_SECONDS:-60}" -print_final_stats=1 \
          -artifact_prefix=build-fuzz/ "$corpus" 2>&1 | tail -n 12
    done
  fi
fi
# One closing line over the ctest stages (skipped GPU tests count as passed by ctest).
total=$(cat "$logs"/*.log | sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1 \2/p' |
        awk '{f += $1; n += $2} END {print n - f, f}')
skipped=$(cat "$logs"/*.log | grep -c '\*\*\*Skipped' || true)
echo "== all test stages passed"
echo "seer: $(( ${total% *} - skipped )) passed, ${total#* } failed, $skipped skipped"
