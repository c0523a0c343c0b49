#!/usr/bin/env bash
# One GPU session for the attention kernels: build (or use prebuilt
# binaries), a smoke run that catches a hung kernel early, the GPU tests,
# compute-sanitizer memcheck, racecheck and synccheck on the small attention
# and gate tests, the sm90 kernel's SASS summary (HGMMA count, local-memory
# traffic), the attention benchmark and its peers (torch SDPA flash/cuDNN,
# FlexAttention on the identical masks), one merged table ($OUT/table.md),
# and issue 10's attention and gate targets judged from it
# (kernels/attention/attention_targets.py, $OUT/targets.md). Logs go to
# $OUT (default ./out/gpu-attention); the tables print last.
#
# Environment:
#   STEPS      comma list of env,build,smoke,tests,sanitizer,sass,bench,peers (default: all)
#   PREBUILT   folder holding seer_gpu_tests and seer-attention-bench built
#              elsewhere (e.g. on a Debian host, carried along); skips the build
#   BUILD_DIR  build folder when building here (default build-gpu)
#   GTEST_SRC  GoogleTest sources for hosts without the package
#              (default .carry/googletest when it exists)
#   TEST_FILTER     gtest filter for the test step (default: the attention and gate tests)
#   SANITIZE_FILTER gtest filter for compute-sanitizer (default: the small shapes)
#   BENCH_ARGS      extra arguments for seer-attention-bench
#   PEERS_ARGS      extra arguments for kernels/attention/attention_peers.py
#   STEP_TIMEOUT    seconds any one step may run (default 600)
#   SANITIZE_TIMEOUT seconds each compute-sanitizer tool may run (default STEP_TIMEOUT)
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/out/gpu-attention}"
mkdir -p "$OUT"
STEPS="${STEPS:-env,build,smoke,tests,sanitizer,sass,bench,peers}"
STEP_TIMEOUT="${STEP_TIMEOUT:-600}"
BUILD_DIR="${BUILD_DIR:-build-gpu}"
TEST_FILTER="${TEST_FILTER:-AttentionGpuTest.*:GateGpuTest.*}"
SANITIZE_FILTER="${SANITIZE_FILTER:-AttentionGpuTest.SanitizerShapes:AttentionGpuTest.EmptyRowsAreZero:GateGpuTest.SmallShapes}"
MASKS_DIR="${MASKS_DIR:-/tmp/seer-attention-masks}"
# Test binaries built elsewhere (PREBUILT) look for the fixtures in the build
# host's checkout unless told: this checkout's.
export SEER_FIXTURES_DIR="${SEER_FIXTURES_DIR:-$PWD/tests/fixtures}"
export PATH="/usr/local/cuda/bin:$PATH"
status=0
summary=()

has_step() { [[ ",$STEPS," == *",$1,"* ]]; }
note() { echo "== $*"; summary+=("$*"); }

if has_step env; then
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nvcc --version | tail -2
    cmake --version | head -1
    ls -d /usr/include/gtest /usr/lib/x86_64-linux-gnu/cmake/GTest 2>&1
    command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>&1
    python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' 2>&1
  } 2>&1 | tee "$OUT/env.log"
fi

if [[ -n "${PREBUILT:-}" ]]; then
  BIN="$(cd "$PREBUILT" && pwd)"
  note "using prebuilt binaries from $BIN"
elif has_step build; then
  BIN="$PWD/$BUILD_DIR/bin"
  cmake_args=(-S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEER_ENABLE_SERVER=OFF
              "-DSEER_CUDA_GENCODE=-gencode=arch=compute_90a,code=sm_90a")
  gtest_src="${GTEST_SRC:-.carry/googletest}"
  if [[ ! -d /usr/include/gtest && -d "$gtest_src" ]]; then
    cmake_args+=("-DSEER_GTEST_SOURCE_DIR=$PWD/$gtest_src")
  fi
  t0=$SECONDS
  if cmake "${cmake_args[@]}" >"$OUT/build.log" 2>&1 &&
     cmake --build "$BUILD_DIR" -j "$(nproc)" --target seer_gpu_tests seer-attention-bench >>"$OUT/build.log" 2>&1; then
    note "build ok ($((SECONDS - t0)) s)"
  else
    tail -40 "$OUT/build.log"
    note "build FAILED"
    exit 1
  fi
else
  BIN="$PWD/$BUILD_DIR/bin"
fi

if has_step smoke; then
  t0=$SECONDS
  timeout 30 "$BIN/seer_gpu_tests" --gtest_filter=AttentionGpuTest.EmptyRowsAreZero >"$OUT/smoke.log" 2>&1
  rc=$?
  note "smoke rc=$rc ($((SECONDS - t0)) s)$([[ $rc -eq 124 ]] && echo ': TIMED OUT (hung kernel?)')"
  if [[ $rc -ne 0 ]]; then tail -30 "$OUT/smoke.log"; status=1; fi
fi

if has_step tests; then
  t0=$SECONDS
  timeout "$STEP_TIMEOUT" "$BIN/seer_gpu_tests" --gtest_filter="$TEST_FILTER" >"$OUT/tests.log" 2>&1
  rc=$?
  grep -E "^\[ +(PASSED|FAILED|SKIPPED) +\]|boundary blocks|Failure|error" "$OUT/tests.log" | head -40
  note "tests rc=$rc ($((SECONDS - t0)) s): $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$OUT/tests.log" | tr '\n' ' ')"
  [[ $rc -ne 0 ]] && status=1
fi

if has_step sanitizer; then
  for tool in memcheck racecheck synccheck; do
    t0=$SECONDS
    timeout "${SANITIZE_TIMEOUT:-$STEP_TIMEOUT}" compute-sanitizer --tool "$tool" --error-exitcode 99 "$BIN/seer_gpu_tests" \
      --gtest_filter="$SANITIZE_FILTER" >"$OUT/sanitizer-$tool.log" 2>&1
    rc=$?
    note "compute-sanitizer $tool rc=$rc ($((SECONDS - t0)) s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log" | tail -1) $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUT/sanitizer-$tool.log" | tr '\n' ' ')"
    [[ $rc -ne 0 ]] && status=1
  done
fi

if has_step sass; then
  # The sm90 kernels' machine code: wgmma must show as HGMMA, and nothing
  # may go through local memory (LDL/STL).
  cuobjdump -sass "$BIN/seer-attention-bench" >"$OUT/bench.sass" 2>&1
  awk '/Function : /{f=$3} /HGMMA/{h[f]++} /LDL|STL/{l[f]++} END{for (k in h) if (k ~ /Sm90(Fwd|Wide|Rows|Pairs)/) printf "  %s: %d HGMMA, %d LDL/STL\n", k, h[k], l[k]+0}' \
    "$OUT/bench.sass" | sort >"$OUT/sass-summary.log"
  note "sass: $(wc -l <"$OUT/sass-summary.log") sm90 kernels; HGMMA/LDL/STL per kernel in sass-summary.log"
  cat "$OUT/sass-summary.log"
  gzip -f "$OUT/bench.sass"
fi

if has_step bench; then
  mkdir -p "$MASKS_DIR"
  t0=$SECONDS
  # shellcheck disable=SC2086
  timeout "$STEP_TIMEOUT" "$BIN/seer-attention-bench" --masks-dir="$MASKS_DIR" ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
  rc=$?
  note "seer-attention-bench rc=$rc ($((SECONDS - t0)) s)"
  [[ $rc -ne 0 ]] && { tail -20 "$OUT/bench.log"; status=1; }
fi

if has_step peers; then
  t0=$SECONDS
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout "$STEP_TIMEOUT" python3 kernels/attention/attention_peers.py --masks-dir "$MASKS_DIR" \
    ${PEERS_ARGS:-} >"$OUT/peers.log" 2>&1
  rc=$?
  note "attention_peers.py rc=$rc ($((SECONDS - t0)) s)"
  [[ $rc -ne 0 ]] && { tail -20 "$OUT/peers.log"; status=1; }
fi

echo
for line in "${summary[@]}"; do echo "$line"; done
if has_step bench && [[ -f "$OUT/bench.log" ]]; then
  echo; echo "-- Seer"; sed -n '/^| dtype/,$p' "$OUT/bench.log"
fi
if has_step peers && [[ -f "$OUT/peers.log" ]]; then
  echo; echo "-- peers"; grep -E "^device|check:" "$OUT/peers.log"; sed -n '/^| dtype/,$p' "$OUT/peers.log"
fi
if [[ -f "$OUT/bench.log" && -f "$OUT/peers.log" ]]; then
  echo; echo "-- merged"
  python3 kernels/attention/attention_table.py "$OUT/bench.log" "$OUT/peers.log" | tee "$OUT/table.md"
  echo; python3 kernels/attention/attention_targets.py "$OUT/table.md" | tee "$OUT/targets.md"
fi
exit $status
