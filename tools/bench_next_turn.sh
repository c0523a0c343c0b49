#!/usr/bin/env bash
# A chat's next turn through both servers: the time to its first token when
# the prompt is the last turn's prompt plus a few new tokens. On a GPU host,
# a Llama-3.1-8B-shaped checkpoint with random weights and gates
# (seer-random-checkpoint), seer-prefill with its prefix store on one GPU
# (--prefix-cache-bytes) and seer-decode on another, two ways:
#
#   prefill-store  seer-decode without a KV prefix store: the prefill
#                  computes only the new tokens, and the whole KV moves;
#   both-stores    seer-decode --kv-prefix-cache-bytes: only the new tokens'
#                  KV moves (docs/SERVICE.md, "The KV prefix store").
#
# For each prompt length L, `seer generate` sends a first turn of L tokens
# (its TTFT is the whole prefill's), then the next turn, L + N tokens that
# start with it. Each way uses its own prompts, so neither finds the other's
# in the prefill's store. It fails loudly (exit 1, saying why): a server
# that does not come up, a failed request, a next turn that took nothing from
# a store that should have held it, a transport other than the one asked for.
#
#   tools/bench_next_turn.sh [--bin DIR] [--out DIR] [--lengths "32768 131008"] [--new-tokens "1024"]
#                            [--sparsity dense] [--transport nccl|grpc] [--prefill-device cuda:0]
#                            [--decode-device cuda:1] [--decode-args "--kv-pool 16GiB"] [--smoke]
#
# --bin: the binaries (default .carry/bundle/bin when it exists, else
# build/bin; a bundle's lib/ goes on LD_LIBRARY_PATH). --smoke: the tiny
# random model on the CPU over gRPC, short prompts: checks the script on
# any machine (CI runs it). On one GPU: --transport grpc --decode-device
# cuda:0, and --decode-args "--kv-pool 16GiB" so that seer-decode leaves the
# prefill room.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
out="${OUT:-/tmp/seer-bench-next-turn}"
lengths="32768 131008"
news="1024"
sparsity=dense
transport=nccl
prefill_dev=cuda:0
decode_dev=cuda:1
decode_extra=""
smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --lengths) lengths="$2"; shift 2 ;;
    --new-tokens) news="$2"; shift 2 ;;
    --sparsity) sparsity="$2"; shift 2 ;;
    --transport) transport="$2"; shift 2 ;;
    --prefill-device) prefill_dev="$2"; shift 2 ;;
    --decode-device) decode_dev="$2"; shift 2 ;;
    --decode-args) decode_extra="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "bench_next_turn: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "bench_next_turn: $*" >&2; exit 1; }
case "$transport" in nccl|grpc) ;; *) die "--transport: $transport is not nccl or grpc" ;; esac

shape=llama-3.1-8b
vocab=128256
if [ "$smoke" = 1 ]; then
  shape=tiny; vocab=512; lengths="640 1000"; news="100"; transport=grpc; prefill_dev=cpu; decode_dev=cpu
fi
# shellcheck source=tools/bench_lib.sh
. tools/bench_lib.sh
bench_use_bin "$bin" seer seer-prefill seer-decode seer-random-checkpoint
if [ "$transport" = nccl ] && [ "$prefill_dev" = "$decode_dev" ]; then
  die "nccl needs the two servers on two GPUs: --decode-device cuda:1 on a two-GPU host, or --transport grpc"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
runs="$out/runs.jsonl"
: >"$runs"

ckpt="$out/ckpt-$shape"
gates="$out/gates-$shape"
"$bin/seer-random-checkpoint" --out "$ckpt" --gates-out "$gates" --shape "$shape" >/dev/null ||
  die "writing the checkpoint failed"

# ids(seed, n): n deterministic ids over the vocabulary, comma-separated.
ids() {
  awk -v s="$1" -v n="$2" -v v="$vocab" 'BEGIN { x = s; for (i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648; printf "%d%s", x % v, (i + 1 < n ? "," : "") } }'
}
ids 7 1024 >"$out/warmup.ids"

"$bin/seer-prefill" --model "$ckpt" --gates "$gates" --device "$prefill_dev" --listen 127.0.0.1:0 \
  --metrics 127.0.0.1:0 --max-buffered-bytes $((64 << 30)) --prefix-cache-bytes $((40 << 30)) \
  --kv-transports nccl,grpc >"$out/prefill.log" 2>&1 &
pids+=($!)
read -r prefill_addr _ <<<"$(wait_ready "$out/prefill.log" "${pids[-1]}" seer-prefill)"

# generate WAY TURN IDS_FILE: one request; appends its summary to runs.jsonl.
generate() {
  local res rc=0
  res=$(timeout 1800 "$bin/seer" generate --addr "$decode_addr" --ids "@$3" --max-new-tokens 4 \
        --sparsity "$sparsity" --timeout 1700 --json 2>"$out/generate.err") || rc=$?
  [ "$rc" = 0 ] || die "$1 $2: seer generate failed (exit $rc): $(tail -c 400 "$out/generate.err")"
  python3 - "$1" "$2" "$3" "$res" >>"$runs" <<'PY'
import json, sys
way, turn, path, res = sys.argv[1:]
r = json.loads(res)
n = len(open(path).read().strip().split(","))
print(json.dumps({"way": way, "turn": turn, "tokens": n, "result": r}))
PY
}

way_seed=100
for way in prefill-store both-stores; do
  args=(--model "$ckpt" --device "$decode_dev" --prefill "$prefill_addr" --listen 127.0.0.1:0 --metrics 127.0.0.1:0
        --max-new-tokens 4 --kv-transports "$transport")
  # shellcheck disable=SC2206  # words, as given
  [ -n "$decode_extra" ] && args+=($decode_extra)
  [ "$way" = both-stores ] && args+=(--kv-prefix-cache-bytes $((24 << 30)))
  "$bin/seer-decode" "${args[@]}" >"$out/decode-$way.log" 2>&1 &
  pids+=($!)
  decode_pid=${pids[-1]}
  read -r decode_addr _ <<<"$(wait_ready "$out/decode-$way.log" "$decode_pid" "seer-decode ($way)")"
  # Warm-up (CUDA, cuBLAS, and the NCCL link, which the first requests set up).
  for i in $(seq 1 30); do
    res=$(timeout 600 "$bin/seer" generate --addr "$decode_addr" --ids "@$out/warmup.ids" --max-new-tokens 2 --json) ||
      die "$way: the warm-up request failed"
    [ "$transport" = grpc ] && [ "$i" -ge 2 ] && break
    python3 -c "import json,sys; sys.exit(json.loads(sys.argv[1]).get('kv_transfer',{}).get('transport') != 'nccl')" \
      "$res" && break
    [ "$i" = 30 ] && die "$way: the NCCL link never became ready"
    sleep 1
  done
  for n in $lengths; do
    for new in $news; do
      way_seed=$((way_seed + 1))
      ids "$way_seed" "$n" >"$out/$way-$n-$new.first.ids"
      { cat "$out/$way-$n-$new.first.ids"; printf ','; ids $((way_seed + 5000)) "$new"; } >"$out/$way-$n-$new.next.ids"
      generate "$way" first "$out/$way-$n-$new.first.ids"
      generate "$way" next "$out/$way-$n-$new.next.ids"
    done
  done
  kill -TERM "$decode_pid"
  wait "$decode_pid" || true
done

echo
echo "== A chat's next turn through both servers, $(date -u +%Y-%m-%dT%H:%MZ)," \
  "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu);" \
  "prefill $prefill_dev, decode $decode_dev, $transport, sparsity $sparsity"
python3 - "$runs" "$transport" <<'PY' | tee "$out/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
transport = sys.argv[2]
print("| first turn tokens | next turn tokens | way | next turn TTFT ms | its prefill ms | from the prefill's store"
      " | KV held by seer-decode | KV moved MB | KV transfer ms | first turn TTFT ms |")
print("|---|---|---|---|---|---|---|---|---|---|")
bad = []
for i in range(0, len(rows), 2):
    first, nxt = rows[i]["result"], rows[i + 1]["result"]
    way, n0, n1 = rows[i]["way"], rows[i]["tokens"], rows[i + 1]["tokens"]
    kv = nxt.get("kv_transfer", {})
    got = kv.get("transport", "grpc")
    if got != transport:
        bad.append(f"{way} {n1}: the KV moved over {got}, not {transport} ({kv.get('fallback_reason', '')})")
    whole = n0 // 64 * 64
    if nxt.get("cached_tokens", 0) < whole - 128:
        bad.append(f"{way} {n1}: the prefill took {nxt.get('cached_tokens')} tokens from its store, expected about {whole}")
    want_held = whole if way == "both-stores" else 0
    if (nxt.get("kv_held_tokens", 0) > 0) != (want_held > 0):
        bad.append(f"{way} {n1}: seer-decode held {nxt.get('kv_held_tokens', 0)} tokens' KV, expected {want_held}")
    print(f"| {n0:,} | {n1:,} | {way} | {nxt['ttft_ms']:.1f} | {nxt['prefill_ms']:.1f} | {nxt.get('cached_tokens', 0):,}"
          f" | {nxt.get('kv_held_tokens', 0):,} | {nxt['kv_bytes'] / 1e6:,.1f} | {nxt['kv_transfer_ms']:.1f}"
          f" | {first['ttft_ms']:.1f} |")
for b in bad:
    print("bench_next_turn:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
