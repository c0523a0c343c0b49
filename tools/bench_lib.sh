# Shared by the end-to-end benchmark scripts (tools/bench_disagg.sh,
# tools/bench_next_turn.sh), which source it after defining die().

# bench_use_bin DIR EXE...: sets `bin` to DIR (empty: .carry/bundle/bin
# when it exists, else build/bin) as an absolute path, puts a bundle's lib/
# on LD_LIBRARY_PATH, keeps NVLink multicast off (docs/GPU.md), and dies
# unless every EXE is there.
bench_use_bin() {
  bin="$1"
  shift
  if [ -z "$bin" ]; then
    if [ -x .carry/bundle/bin/seer-prefill ]; then bin=.carry/bundle/bin; else bin=build/bin; fi
  fi
  bin="$(cd "$bin" && pwd)"
  if [ -d "$bin/../lib" ]; then
    export LD_LIBRARY_PATH="$bin/../lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  export NCCL_NVLS_ENABLE=0
  for exe in "$@"; do
    [ -x "$bin/$exe" ] || die "$bin/$exe is missing (build it, or tools/pack_gpu_bundle.sh)"
  done
}

# The servers started (append their pids to `pids`) stop when the script
# ends, however it ends.
pids=()
bench_cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  exit "$status"
}
trap bench_cleanup EXIT INT TERM

# wait_ready LOG PID NAME: waits for "<program> ready" in LOG and prints the
# "listening on HOST:PORT metrics on HOST:PORT" addresses; dies if PID exits
# first or after 20 minutes.
wait_ready() {
  local log="$1" pid="$2" name="$3"
  for _ in $(seq 1 12000); do
    if grep -q " ready: " "$log"; then
      grep -m1 " listening on " "$log" | awk '{print $4, $7}'
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "$name exited before it was ready"; }
    sleep 0.1
  done
  cat "$log" >&2
  die "$name was not ready after 20 minutes"
}
