#!/usr/bin/env bash
# The end-to-end disaggregation benchmark (issue 9): on a GPU host, a
# Llama-3.1-8B-shaped checkpoint with random weights and gates
# (seer-random-checkpoint, no download), seer-prefill on one GPU and
# seer-decode on another, and `seer generate` with 8k, 32k and ~128k-token
# prompts, dense and nz_ratio=0.1, for each KV transport: nccl, grpc, and
# grpc with fp8 on the wire. Then HF transformers sdpa monolithic prefill on
# the same GPU (tools/bench_prefill_hf.py) and the error fp8 adds
# (seer-kv-wire-error on the same checkpoint), and one table
# (tools/bench_disagg_report.py): TTFT at the client, prefill compute of the
# same request, KV bytes, seconds and GB/s, time the prefill was blocked on
# the transport, inter-token latency, and whether the tokens equal grpc's.
#
# It fails loudly (exit 1, saying why): missing binaries, a server that does
# not come up, a failed request, a transport other than the one asked for,
# nccl and grpc disagreeing on greedy tokens, in-flight gauges not back to 0.
#
#   tools/bench_disagg.sh [--bin DIR] [--out DIR] [--lengths "8192 32768 131008"] [--modes "dense nz_ratio=0.1"]
#                         [--transports "nccl grpc grpc+fp8"] [--new-tokens 32] [--repeats 2]
#                         [--prefill-device cuda:0] [--decode-device cuda:1] [--grpc-streams 8]
#                         [--no-hf] [--allow-fallback] [--smoke]
#
# --bin: the binaries (default .carry/bundle/bin when it exists, else build/bin;
# a bundle's lib/ beside it goes on LD_LIBRARY_PATH with /usr/local/cuda/lib64).
# --smoke: the tiny random model on the CPU, short prompts, grpc only: checks
# the script itself on any machine (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

bin=""
out="${OUT:-/tmp/seer-bench-disagg}"
lengths="8192 32768 131008"
modes="dense nz_ratio=0.1"
transports="nccl grpc grpc+fp8"
new_tokens=32
repeats=2
prefill_dev=cuda:0
decode_dev=cuda:1
streams=8
hf=1
allow_fallback=0
smoke=0
transports_given=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --lengths) lengths="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --transports) transports="$2"; transports_given=1; shift 2 ;;
    --new-tokens) new_tokens="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --prefill-device) prefill_dev="$2"; shift 2 ;;
    --decode-device) decode_dev="$2"; shift 2 ;;
    --grpc-streams) streams="$2"; shift 2 ;;
    --no-hf) hf=0; shift ;;
    --allow-fallback) allow_fallback=1; shift ;;
    --smoke) smoke=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "bench_disagg: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "bench_disagg: $*" >&2; exit 1; }

shape=llama-3.1-8b
vocab=128256
if [ "$smoke" = 1 ]; then
  shape=tiny; vocab=512
  lengths="256 1000"; modes="dense nz_ratio=0.5"; new_tokens=4; repeats=1
  prefill_dev=cpu; decode_dev=cpu; hf=0
fi
# shellcheck source=tools/bench_lib.sh
. tools/bench_lib.sh
bench_use_bin "$bin" seer seer-prefill seer-decode seer-random-checkpoint seer-kv-wire-error
mkdir -p "$out"
out="$(cd "$out" && pwd)"
runs="$out/runs.jsonl"
: >"$runs"
echo "bench_disagg: binaries $bin, output $out"

# The transport integration (docs/KV_TRANSPORT.md) adds these flags; without
# them only today's single gRPC stream can be measured.
integrated=1
"$bin/seer-prefill" --help 2>&1 | grep -q -- "--kv-transports" || integrated=0
if [ "$smoke" = 1 ] && [ "$transports_given" = 0 ]; then
  if [ "$integrated" = 1 ]; then transports="grpc grpc+fp8"; else transports=grpc; fi
fi
if [ "$integrated" = 0 ]; then
  for t in $transports; do
    [ "$t" = grpc ] || die "transport $t: these servers have no --kv-transports (the integration of docs/KV_TRANSPORT.md is not in this build); --transports grpc measures today's gRPC stream"
  done
  echo "bench_disagg: servers without transports: measuring today's gRPC stream"
fi
if [ "$smoke" = 0 ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
  [ "$gpus" -ge 1 ] || die "no GPU visible (nvidia-smi -L); --smoke runs on the CPU"
  if [[ " $transports " == *" nccl "* ]] && [ "$prefill_dev" = "$decode_dev" ]; then
    die "nccl needs the two servers on two GPUs (NCCL does not put both ranks on one GPU): --decode-device cuda:1 on a two-GPU host, or --transports \"grpc grpc+fp8\""
  fi
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | sed 's/^/  GPU /'
fi

# --- the checkpoint ----------------------------------------------------------
ckpt="$out/ckpt-$shape"
gates="$out/gates-$shape"
"$bin/seer-random-checkpoint" --out "$ckpt" --gates-out "$gates" --shape "$shape" || die "writing the checkpoint failed"

# --- prompts: deterministic ids over the vocabulary ----------------------------
for n in $lengths; do
  awk -v n="$n" -v v="$vocab" 'BEGIN { x = 12345; for (i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648;
    printf "%d%s", x % v, (i + 1 < n ? "," : "\n") } }' >"$out/prompt-$n.ids"
done
awk -v v="$vocab" 'BEGIN { for (i = 0; i < 1024; i++) printf "%d%s", (i * 7919) % v, (i < 1023 ? "," : "\n") }' \
  >"$out/prompt-warmup.ids"

# --- servers (bench_lib.sh stops them at the end: pids, wait_ready) --------------
# Reads one metric's value (the sum over its series) from a /metrics page.
metric() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
page = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
vals = [float(l.split()[-1]) for l in page.splitlines() if l.startswith(sys.argv[2] + " ") or l.startswith(sys.argv[2] + "{")]
print(sum(vals) if vals else "absent")
PY
}

max_tokens=$(echo $lengths | tr ' ' '\n' | sort -n | tail -1)
# A 128k prompt's KV alone is 17 GB on the 8B shape: the stream budget
# (--max-buffered-bytes, which counts the KV cache a stream drains from) must
# hold it.
prefill_args=(--model "$ckpt" --gates "$gates" --device "$prefill_dev" --listen 127.0.0.1:0 --metrics 127.0.0.1:0
              --max-buffered-bytes $((64 << 30)))
[ "$integrated" = 1 ] && prefill_args+=(--kv-transports nccl,grpc --kv-grpc-streams "$streams" --allow-kv-fp8)
echo "== seer-prefill ${prefill_args[*]}"
"$bin/seer-prefill" "${prefill_args[@]}" >"$out/prefill.log" 2>&1 &
prefill_pid=$!
pids+=("$prefill_pid")
read -r prefill_addr prefill_metrics <<<"$(wait_ready "$out/prefill.log" "$prefill_pid" seer-prefill)"
grep -m1 " ready: " "$out/prefill.log"

generate() {  # transport length sparsity: one request, one line of runs.jsonl
  local t="$1" n="$2" sp="$3" ids="$out/prompt-$2.ids" extra=()
  [[ "$t" == *fp8 ]] && extra+=(--kv-wire fp8)
  local res rc=0
  res=$(timeout 1800 "$bin/seer" generate --addr "$decode_addr" --ids "@$ids" --max-new-tokens "$new_tokens" \
        --sparsity "$sp" --timeout 1700 --json "${extra[@]}" 2>"$out/generate.err") || rc=$?
  python3 - "$t" "$n" "$sp" "$new_tokens" "$rc" "$res" "$out/generate.err" >>"$runs" <<'PY'
import json, sys
t, n, sp, new, rc, res, err = sys.argv[1:]
row = {"transport": t, "tokens_in": int(n), "sparsity": sp, "new_tokens": int(new), "rc": int(rc)}
try:
    row["result"] = json.loads(res)
except ValueError:
    row["error"] = open(err).read()
print(json.dumps(row))
PY
  [ "$rc" = 0 ] || { echo "   $t $n $sp: FAILED (exit $rc): $(tail -c 300 "$out/generate.err")" >&2; return 0; }
  python3 -c "import json,sys; r=json.loads(sys.argv[1]); k=r.get('kv_transfer',{}); \
print(f\"   {sys.argv[2]:10s} {sys.argv[3]:>7s} {sys.argv[4]:14s} ttft {r['ttft_ms']:9.1f} ms  prefill {r['prefill_ms']:9.1f} ms  kv {k.get('transport','grpc')}\")" \
    "$res" "$t" "$n" "$sp"
}

for t in $transports; do
  decode_args=(--model "$ckpt" --device "$decode_dev" --prefill "$prefill_addr" --listen 127.0.0.1:0
               --metrics 127.0.0.1:0 --max-new-tokens "$new_tokens")
  if [ "$integrated" = 1 ]; then
    if [ "$t" = nccl ]; then decode_args+=(--kv-transports nccl,grpc); else decode_args+=(--kv-transports grpc); fi
    decode_args+=(--kv-grpc-streams "$streams")
  fi
  echo "== $t: seer-decode ${decode_args[*]}"
  "$bin/seer-decode" "${decode_args[@]}" >"$out/decode-$t.log" 2>&1 &
  decode_pid=$!
  pids+=("$decode_pid")
  read -r decode_addr decode_metrics <<<"$(wait_ready "$out/decode-$t.log" "$decode_pid" "seer-decode ($t)")"
  # Warm-up: CUDA, cuBLAS, and for nccl the link (the first request of a
  # pair goes over gRPC while the communicator is set up; requests go over
  # it once both sides find it ready).
  for i in $(seq 1 30); do
    timeout 600 "$bin/seer" generate --addr "$decode_addr" --ids "@$out/prompt-warmup.ids" --max-new-tokens 2 \
      --json >"$out/warmup-$t.json" 2>&1 || { cat "$out/warmup-$t.json" >&2; die "$t: the warm-up request failed"; }
    if [ "$t" != nccl ] || [ "$integrated" = 0 ]; then
      [ "$i" -ge 2 ] && break
    elif python3 -c "import json,sys; sys.exit(json.load(open(sys.argv[1])).get('kv_transfer',{}).get('transport') != 'nccl')" \
        "$out/warmup-$t.json"; then
      echo "   the NCCL link is ready after $i warm-up requests"
      break
    elif [ "$i" = 30 ]; then
      [ "$allow_fallback" = 1 ] || die "nccl: the link never became ready ($(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('kv_transfer',{}).get('fallback_reason',''))" "$out/warmup-$t.json"))"
    else
      sleep 1
    fi
  done
  for n in $lengths; do
    for sp in $modes; do
      for _ in $(seq 1 "$repeats"); do generate "$t" "$n" "$sp"; done
    done
  done
  inflight=$(metric "$decode_metrics" seer_kv_transfers_inflight)
  [ "$inflight" = absent ] || [ "$inflight" = 0.0 ] || die "$t: seer-decode reports $inflight KV transfers in flight after the runs"
  kill -TERM "$decode_pid"
  wait "$decode_pid" || true
done
inflight=$(metric "$prefill_metrics" seer_prefill_inflight_requests)
[ "$inflight" = 0.0 ] || die "seer-prefill reports $inflight requests in flight after the runs"
kill -TERM "$prefill_pid"
wait "$prefill_pid" || true
pids=()

# --- HF transformers and the fp8 error, with the GPUs free again ------------------
report_args=()
if [ "$hf" = 1 ]; then
  echo "== HF transformers sdpa (monolithic prefill), $prefill_dev"
  CUDA_VISIBLE_DEVICES="${prefill_dev#cuda:}" PYTHONUNBUFFERED=1 timeout 1800 python3 tools/bench_prefill_hf.py \
    --lengths "$(echo $lengths | tr ' ' ',')" --repeats 1 >"$out/hf.log" 2>&1 || echo "bench_disagg: HF run failed (see $out/hf.log)" >&2
  report_args+=(--hf "$out/hf.log")
fi
echo "== fp8 KV error on this checkpoint ($prefill_dev)"
wire_tokens=8192
[ "$smoke" = 1 ] && wire_tokens=1000
timeout 1800 "$bin/seer-kv-wire-error" --model "$ckpt" --device "$prefill_dev" --tokens "$wire_tokens" --steps 32 \
  >"$out/wire_error.log" 2>&1 || { cat "$out/wire_error.log" >&2; die "seer-kv-wire-error failed"; }
report_args+=(--wire-error "$out/wire_error.log")
[ "$integrated" = 0 ] && report_args+=(--legacy)
[ "$allow_fallback" = 1 ] && report_args+=(--allow-fallback)

echo
echo "== Disaggregated prefill -> decode, $(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu); prefill $prefill_dev, decode $decode_dev, $new_tokens new tokens, median of $repeats"
python3 tools/bench_disagg_report.py "$runs" "${report_args[@]}" | tee "$out/table.md"
