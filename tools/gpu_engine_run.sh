#!/usr/bin/env bash
# One run on a GPU host (the device tool's machine, or any CUDA 13 host) that
# checks and measures the CUDA engine, in this order:
#   1. seer_gpu_tests (every GPU test: ops vs CPU twins, engine vs HF fixtures,
#      attention and gate kernels)
#   2. compute-sanitizer memcheck and racecheck over the ops and a fixture
#      prefill/decode (which runs the gate and attention kernels too)
#   3. the prefill benchmark: bench/prefill_bench.cu (Seer dense and
#      nz_ratio=0.1) and tools/bench_prefill_hf.py (HF transformers, sdpa),
#      one after the other in the same run
#   4. the servers end to end: seer-prefill and seer-decode on --device cuda,
#      `seer generate` through them, a /metrics scrape, and `seer run --device
#      cuda`
# Logs go to $OUT (default /tmp/seer-gpu-run): summary.txt, gpu_tests.log,
# sanitizer.log, prefill_bench.log, prefill_hf.log, servers.log.
#
# Binaries come from the bundle that tools/pack_gpu_bundle.sh made on the
# build host (default .carry/bundle: Debian-built, with its shared libraries;
# docs/GPU.md). Without a bundle the tests and the bench are built here with
# CMake (no gRPC, so no servers).
#
#   bash tools/gpu_engine_run.sh [BUNDLE_DIR]
#   SEER_RUN_STEPS="tests sanitizer bench hf servers" selects steps.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
out="${OUT:-/tmp/seer-gpu-run}"
mkdir -p "$out"
bundle="${1:-.carry/bundle}"
steps="${SEER_RUN_STEPS:-tests sanitizer bench hf servers}"
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
want() { [[ " $steps " == *" $1 "* ]]; }

note "== seer GPU engine run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$summary"

# --- binaries ----------------------------------------------------------------
if [ -x "$bundle/bin/seer_gpu_tests" ]; then
  bin="$root/$bundle/bin"
  export LD_LIBRARY_PATH="$root/$bundle/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  note "binaries: bundle $bundle ($(ls "$bundle/bin" | tr '\n' ' '))"
else
  note "binaries: no bundle at $bundle; building tests and bench here"
  gencode="-gencode=arch=compute_90a,code=sm_90a"
  if ! cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEER_ENABLE_SERVER=OFF \
        "-DSEER_CUDA_GENCODE=$gencode" >"$out/build.log" 2>&1; then
    note "configure with tests failed (GoogleTest missing?); building the bench only"
    cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEER_ENABLE_SERVER=OFF \
          -DSEER_ENABLE_TESTS=OFF "-DSEER_CUDA_GENCODE=$gencode" >>"$out/build.log" 2>&1
  fi
  ninja -C build-gpu -j "$(nproc)" seer_gpu_tests seer-prefill-bench >>"$out/build.log" 2>&1 ||
    ninja -C build-gpu -j "$(nproc)" seer-prefill-bench >>"$out/build.log" 2>&1
  tail -n 3 "$out/build.log"
  bin="$root/build-gpu/bin"
fi

# Test binaries carry the build host's fixture path; point them here.
export SEER_FIXTURES_DIR="$root/tests/fixtures"
if [ ! -e /work/main/tests/fixtures ] && [ ! -e /work/main ]; then
  mkdir -p /work 2>/dev/null && ln -s "$root" /work/main 2>/dev/null || true
fi

# --- 1. GPU tests --------------------------------------------------------------
if want tests && [ -x "$bin/seer_gpu_tests" ]; then
  note "== [1] seer_gpu_tests"
  timeout 900 "$bin/seer_gpu_tests" --gtest_color=no >"$out/gpu_tests.log" 2>&1
  rc=$?
  grep -E '^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|tests? (passed|failed)' "$out/gpu_tests.log" | tail -n 40 |
    tee -a "$summary"
  grep -E '^\[(llama|qwen2)\]|impossible|random gates' "$out/gpu_tests.log" | tee -a "$summary"
  note "seer_gpu_tests exit $rc"
fi

# --- 2. compute-sanitizer ------------------------------------------------------
if want sanitizer && [ -x "$bin/seer_gpu_tests" ] && command -v compute-sanitizer >/dev/null; then
  note "== [2] compute-sanitizer"
  filter='GpuOpsTest.*:GpuGemmTest.*:Fixtures/CudaFixtureTest.PrefillLogitsAndKvMatchHuggingFace/*'
  filter+=':Fixtures/CudaFixtureTest.DecodeStepsMatchHuggingFaceRows/*'
  filter+=':Fixtures/CudaFixtureTest.GatedMasksAgreeWithCpuEngineUpToBf16Rounding/0'
  # This test provokes a CUDA API error on purpose (an invalid device), which
  # memcheck counts as an error; it checks error handling, not memory.
  filter+=':-GpuOpsTest.AReportedFailureDoesNotFailTheNextLaunch'
  : >"$out/sanitizer.log"
  for tool in memcheck racecheck; do
    f="$filter"
    [ "$tool" = racecheck ] && f='GpuOpsTest.*:Fixtures/CudaFixtureTest.GatedMasksAgreeWithCpuEngineUpToBf16Rounding/0'
    echo "--- $tool ($f)" >>"$out/sanitizer.log"
    timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 "$bin/seer_gpu_tests" --gtest_color=no \
      "--gtest_filter=$f" >>"$out/sanitizer.log" 2>&1
    rc=$?
    note "$tool: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer.log" | tail -n 1)"
  done
fi

# --- 3. prefill benchmark: Seer, then HF ---------------------------------------
if want bench && [ -x "$bin/seer-prefill-bench" ]; then
  note "== [3a] seer-prefill-bench"
  timeout 420 "$bin/seer-prefill-bench" ${SEER_BENCH_ARGS:-} >"$out/prefill_bench.log" 2>&1
  note "exit $?"
  sed -n '/^Prefill TTFT/,$p' "$out/prefill_bench.log" | tee -a "$summary"
  grep -E '^(device|model):' "$out/prefill_bench.log" | tee -a "$summary"
fi
if want hf; then
  note "== [3b] HF transformers prefill (sdpa)"
  PYTHONUNBUFFERED=1 timeout 480 python3 tools/bench_prefill_hf.py ${SEER_HF_ARGS:-} >"$out/prefill_hf.log" 2>&1
  note "exit $?"
  sed -n '/^HF transformers prefill TTFT/,$p' "$out/prefill_hf.log" | tee -a "$summary"
  grep -E '^(device|model|forward)' "$out/prefill_hf.log" | tee -a "$summary"
  grep -iE 'error|Traceback' "$out/prefill_hf.log" | tail -n 5 | tee -a "$summary"
fi

# --- 4. servers end to end -----------------------------------------------------
if want servers && [ -x "$bin/seer-prefill" ] && [ -x "$bin/seer-decode" ] && [ -x "$bin/seer" ]; then
  note "== [4] seer-prefill + seer-decode on --device cuda, seer generate"
  log="$out/servers.log"
  : >"$log"
  model=tests/fixtures/llama
  gates=tests/fixtures/llama_gates
  python3 - "$model/expected.safetensors" "$out/prompt_ids.txt" "$out/greedy.txt" <<'EOF' >>"$log" 2>&1
import sys
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
open(sys.argv[2], "w").write(",".join(str(int(x)) for x in t["input_ids"]))
open(sys.argv[3], "w").write(",".join(str(int(x)) for x in t["greedy_tokens"]))
EOF
  "$bin/seer-prefill" --model "$model" --gates "$gates" --device cuda --listen 127.0.0.1:50151 \
    --metrics 127.0.0.1:9190 >"$out/prefill_server.txt" 2>&1 &
  prefill_pid=$!
  "$bin/seer-decode" --model "$model" --prefill 127.0.0.1:50151 --device cuda --listen 127.0.0.1:50152 \
    --metrics 127.0.0.1:9191 >"$out/decode_server.txt" 2>&1 &
  decode_pid=$!
  for _ in $(seq 1 120); do
    if grep -q "ready" "$out/prefill_server.txt" && grep -q "ready" "$out/decode_server.txt"; then break; fi
    if ! kill -0 "$prefill_pid" 2>/dev/null || ! kill -0 "$decode_pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  cat "$out/prefill_server.txt" "$out/decode_server.txt" | tee -a "$summary"
  {
    echo "--- seer generate (gates' default sparsity), 8 tokens"
    timeout 60 "$bin/seer" generate --addr 127.0.0.1:50152 --ids @"$out/prompt_ids.txt" --max-new-tokens 8 --json
    echo "exit $?"
    echo "--- seer generate --sparsity dense"
    timeout 60 "$bin/seer" generate --addr 127.0.0.1:50152 --ids @"$out/prompt_ids.txt" --max-new-tokens 8 \
      --sparsity dense --json
    echo "exit $?"
    echo "--- seer generate --sparsity nz_ratio=0.5, sampled (temperature 0.8, top-k 20, top-p 0.9, seed 7)"
    timeout 60 "$bin/seer" generate --addr 127.0.0.1:50152 --ids @"$out/prompt_ids.txt" --max-new-tokens 8 \
      --sparsity nz_ratio=0.5 --temperature 0.8 --top-k 20 --top-p 0.9 --seed 7 --json
    echo "exit $?"
    echo "--- HF greedy tokens: $(cat "$out/greedy.txt")"
    echo "--- prefill /metrics (seer_ lines)"
    python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9190/metrics',timeout=10).read().decode())" |
      grep -E '^seer_' | head -n 25
    echo "--- decode /metrics (seer_ lines)"
    python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9191/metrics',timeout=10).read().decode())" |
      grep -E '^seer_' | head -n 25
    echo "--- seer run --device cuda (offline, same prompt, gates, nz_ratio=0.5)"
    timeout 60 "$bin/seer" run --model "$model" --gates "$gates" --device cuda --sparsity nz_ratio=0.5 \
      --ids @"$out/prompt_ids.txt" --max-new-tokens 8 --json
    echo "exit $?"
  } >>"$log" 2>&1
  kill -TERM "$decode_pid" "$prefill_pid" 2>/dev/null
  wait "$decode_pid" "$prefill_pid" 2>/dev/null
  cat "$out/prefill_server.txt" "$out/decode_server.txt" >>"$log"
  rm -f "$out/prefill_server.txt" "$out/decode_server.txt" "$out/prompt_ids.txt" "$out/greedy.txt"
  grep -vE '^seer_.*(bucket|_sum|_count)' "$log" | grep -E '"tokens"|exit|^---|ready|listening|error|^seer_' |
    head -n 60 | tee -a "$summary"
elif want servers; then
  note "== [4] servers skipped: no seer-prefill / seer-decode / seer in $bin"
fi
note "== done"
