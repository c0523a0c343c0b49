#!/usr/bin/env bash
# Takes the v6 block-sparse attention kernel (Sm90PairsKernel) apart, to show
# what bounds its rate on the blocks it computes: the kernel as built (mode
# 0), without its wgmma (1: the K/V copies, barriers and softmax arithmetic
# alone), without its copies (2: the consumers compute on whatever the
# stages hold) and without both (3). Each runs for a few seconds with the
# benchmark's --power, since under the 700 W cap the clock is part of the
# answer. Modes 1-3 give wrong outputs by
# design (SEER_ATTENTION_DECOMPOSE in kernels/attention/attention_sm90.cu).
#
#   tools/attention_decompose.sh build DIR   # host with nvcc: four seer-attention-bench builds into DIR
#   tools/attention_decompose.sh run DIR     # GPU host: the table (markdown) on stdout
#
# Environment: BUILD_DIR (build, default build-decompose); SEQS (default
# 32768,131072), SPARSITIES (default 0.5,0.9), DIM (default 128), RUN_SECONDS
# (per run, default 3) for run.
#
# Each row's clock and power come from the benchmark's --power (NVML, over
# the timed runs only): the mean SM clock, the mean board power from the
# energy counter, the energy per computed TFLOP (that power over the
# computed rate; for the diagnostic builds a rate of FLOPs they skip or
# fake), and the share of samples in which the software power cap held
# the clock.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}
[[ $# -eq 2 ]] || usage
cmd="$1"
dir="$2"

case "$cmd" in
  build)
    mkdir -p "$dir"
    build="${BUILD_DIR:-build-decompose}"
    for mode in 0 1 2 3; do
      echo "== SEER_ATTENTION_DECOMPOSE=$mode" >&2
      cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEER_ENABLE_SERVER=OFF -DSEER_ENABLE_TESTS=OFF \
        -DSEER_ATTENTION_DECOMPOSE="$mode" >/dev/null
      ninja -C "$build" seer-attention-bench >&2
      cp "$build/bin/seer-attention-bench" "$dir/seer-attention-bench-$mode"
      strip "$dir/seer-attention-bench-$mode"
    done
    # Leave the build folder as the kernel.
    cmake -S . -B "$build" -DSEER_ATTENTION_DECOMPOSE=0 >/dev/null
    ;;
  run)
    seqs="${SEQS:-32768,131072}"
    sparsities="${SPARSITIES:-0.5,0.9}"
    dim="${DIM:-128}"
    seconds="${RUN_SECONDS:-3}"
    for mode in 0 1 2 3; do
      [[ -x "$dir/seer-attention-bench-$mode" ]] || { echo "missing $dir/seer-attention-bench-$mode" >&2; exit 1; }
    done
    nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader
    # One run: prints "ms computed_tflops mhz watts joules_per_tflop cap_percent"
    # ("-" for each field the line lacks).
    one() {
      local mode="$1" seq="$2" sparsity="$3" line
      line=$("$dir/seer-attention-bench-$mode" --seqs="$seq" --sparsities="$sparsity" --variants=v6 --dims="$dim" \
        --dtypes=bf16 --no-gate --power --warmup=2 --min-seconds="$seconds" --min-iters=3 --max-iters=1000000 2>&1 |
        grep -E '^  bf16 d=' | head -1 || true)
      awk -v line="$line" 'BEGIN {
        n = split(line, f, " ")
        ms = tf = mhz = w = j = cap = "-"
        for (i = 2; i <= n; i++) {
          if (f[i] == "ms") ms = f[i - 1]
          if (f[i] == "computed") tf = f[i - 1]
          if (f[i] == "MHz") mhz = f[i - 1]
          if (f[i] == "W") w = f[i - 1]
          if (f[i] == "J/TFLOP") j = f[i - 1]
          if (f[i - 1] == "cap") cap = f[i]
        }
        print ms, tf, mhz, w, j, cap
      }'
    }
    names=("the kernel" "no wgmma (copies)" "no copies (wgmma)" "neither")
    echo
    echo "v6 taken apart, d = $dim, bf16, 32 heads, 32 KV heads, uniform random masks (diagonal kept), ${seconds} s a run"
    echo
    echo "| seq | sparsity | build | ms | computed TFLOP/s | / dense | / 0.9x-dense time | SM MHz | board W | J / computed TFLOP | power cap |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    IFS=, read -ra seq_list <<<"$seqs"
    IFS=, read -ra sp_list <<<"$sparsities"
    for seq in "${seq_list[@]}"; do
      read -r dms dtf dmhz dw dj dcap <<<"$(one 0 "$seq" 0)"
      echo "| $seq | 0 | the kernel | $dms | $dtf | 1 | - | $dmhz | $dw | $dj | $dcap |"
      for sp in "${sp_list[@]}"; do
        for mode in 0 1 2 3; do
          read -r ms tf mhz w j cap <<<"$(one "$mode" "$seq" "$sp")"
          # The cell's target time: its computed FLOPs at 0.9x the dense rate.
          awk -v seq="$seq" -v sp="$sp" -v name="${names[$mode]}" -v ms="$ms" -v tf="$tf" -v dtf="$dtf" \
            -v mhz="$mhz" -v w="$w" -v j="$j" -v cap="$cap" 'BEGIN {
              if (ms == "-" || tf == "-" || dtf == "-") {
                printf "| %s | %s | %s | - | - | - | - | - | - | - | - |\n", seq, sp, name
                exit
              }
              target = ms * tf / (0.9 * dtf)
              printf "| %s | %s | %s | %s | %s | %.3f | %.2f | %s | %s | %s | %s |\n", seq, sp, name, ms, tf,
                     tf / dtf, ms / target, mhz, w, j, cap
            }'
        done
      done
    done
    ;;
  *) usage ;;
esac
