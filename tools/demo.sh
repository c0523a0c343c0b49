#!/usr/bin/env bash
# The disaggregated demo on one machine: seer-prefill and seer-decode on
# loopback (ports picked by the kernel, read from their startup lines) with the
# bundled model (models/seer-small, trained by tools/train_small_model.py), its
# SeerAttention gates (models/seer-small-gates, trained by seer-train) and its
# tokenizer; a passkey question through `seer generate` (a key hidden in a
# long document, the gated prefill, the answer and the time to first token),
# another question on the same document (its prefix from seer-prefill's
# prefix store),
# a text continuation, an OpenAI-style /v1/completions call over HTTP; an
# excerpt of both servers' /metrics; and the servers stopped on the way out
# (SIGTERM, graceful drain).
#
# Builds nothing: run it after the build (tools/quickstart.sh does both).
#   SEER_BUILD_DIR   build directory holding bin/ (default: build)
#   SEER_DEVICE      cpu, cuda or auto (default: auto: the GPU when there is one)
#   SEER_FILLERS     filler sentences of the passkey document (default 200: about 6,500 tokens)
#   SEER_NEW_TOKENS  tokens to generate for the text prompts (default 24)
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${SEER_BUILD_DIR:-build}/bin"
device="${SEER_DEVICE:-auto}"
fillers="${SEER_FILLERS:-200}"
new_tokens="${SEER_NEW_TOKENS:-24}"
model=models/seer-small
gates=models/seer-small-gates

for exe in seer seer-prefill seer-decode; do
  if [ ! -x "$bin/$exe" ]; then
    echo "demo: $bin/$exe is missing; build first (tools/quickstart.sh, or cmake --build build)" >&2
    exit 1
  fi
done
gate_args=()
if [ -d "$gates" ]; then gate_args=(--gates "$gates"); else echo "demo: no $gates, prefill is dense" >&2; fi

work="$(mktemp -d)"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT INT TERM

# Waits for "<program> ready" in a server's log and prints its
# "listening on HOST:PORT metrics on HOST:PORT" line's two addresses.
wait_ready() {
  local log="$1" name="$2"
  for _ in $(seq 1 600); do
    if grep -q " ready: " "$log"; then
      grep -m1 " listening on " "$log" | awk '{print $4, $7}'
      return 0
    fi
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
      echo "demo: $name exited:" >&2
      cat "$log" "$log.err" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "demo: $name did not become ready in 60 s" >&2
  cat "$log" "$log.err" >&2
  return 1
}

echo "== starting seer-prefill ($model${gate_args[*]:+ + gates}, --device $device)"
"$bin/seer-prefill" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --model "$model" "${gate_args[@]}" \
  --device "$device" --prefix-cache-bytes 1073741824 >"$work/prefill.log" 2>"$work/prefill.log.err" &
pids+=($!)
addrs="$(wait_ready "$work/prefill.log" seer-prefill)"
read -r prefill_addr prefill_metrics <<<"$addrs"
grep -m1 " ready: " "$work/prefill.log"

echo "== starting seer-decode (pulls KV from $prefill_addr)"
"$bin/seer-decode" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --http 127.0.0.1:0 --model "$model" \
  --prefill "$prefill_addr" --device "$device" --kv-prefix-cache-bytes 134217728 \
  >"$work/decode.log" 2>"$work/decode.log.err" &
pids+=($!)
addrs="$(wait_ready "$work/decode.log" seer-decode)"
read -r decode_addr decode_metrics <<<"$addrs"
http_addr="$(grep -m1 " http on " "$work/decode.log" | awk '{print $4}')"
grep -m1 " ready: " "$work/decode.log"

# The passkey document the model was trained on and is evaluated with
# (bench/quality_eval.cc, docs/QUALITY.md): a key hidden at a third of a long
# run of filler sentences, then the question.
key=$(((RANDOM % 90000) + 10000))
doc="There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you"
doc+=" about the important information there."
for ((i = 0; i < fillers; i++)); do
  if ((i == fillers / 3)); then doc+=" The pass key is $key. Remember it. $key is the pass key."; fi
  doc+=" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
done
printf '%s' "$doc Now repeat the pass key. The pass key is" >"$work/again.txt"
doc+=" What is the pass key? The pass key is"
printf '%s' "$doc" >"$work/passkey.txt"

echo "== seer generate --prompt-file passkey.txt (a ${#doc}-character document hiding the key $key; gated prefill)"
"$bin/seer" generate --addr "$decode_addr" --prompt-file "$work/passkey.txt" --max-new-tokens 8 --json |
  tee "$work/passkey.json" | tail -n 1
answer="$(grep -o '"text":"[^"]*"' "$work/passkey.json" | tail -n 1 || true)"
case "$answer" in
  *"$key"*) echo "passkey: the model answered $key, the key it was given" ;;
  *) echo "passkey: the answer ($answer) is not the key $key" ;;
esac

# The same document with another question: seer-prefill kept the first
# prompt's KV (--prefix-cache-bytes), so this one computes only its end, and
# seer-decode kept its KV pages (--kv-prefix-cache-bytes), so only the end's
# KV moves.
echo "== seer generate --prompt-file again.txt (the same document, another question; the prefix store)"
"$bin/seer" generate --addr "$decode_addr" --prompt-file "$work/again.txt" --max-new-tokens 8 --json |
  tee "$work/again.json" | tail -n 1
field() { grep -o "\"$1\":[0-9.]*" "$2" | tail -n 1 | cut -d: -f2; }
echo "prefix store: $(field cached_tokens "$work/again.json") of $(field prompt_tokens "$work/again.json") prompt" \
  "tokens taken from it; prefill $(field prefill_ms "$work/again.json") ms against" \
  "$(field prefill_ms "$work/passkey.json") ms for the first question"
echo "KV prefix store: $(field kv_held_tokens "$work/again.json") prompt tokens' KV held by seer-decode;" \
  "$(field kv_bytes "$work/again.json") KV bytes moved against $(field kv_bytes "$work/passkey.json")"

text="In the beginning God created the heaven and the earth. And the earth was without form, and void;"
echo "== seer generate --prompt '$text' (the server tokenizes; the reply streams as text)"
"$bin/seer" generate --addr "$decode_addr" --prompt "$text" --max-new-tokens "$new_tokens"

text2="The most important thing for a startup is"
echo "== POST http://$http_addr/v1/completions (the OpenAI API on seer-decode --http)"
curl -s "http://$http_addr/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"seer-small\", \"prompt\": \"$text2\", \"max_tokens\": $new_tokens, \"temperature\": 0}"
echo

excerpt() {
  curl -s "http://$1/metrics" | grep -E "^seer_" | grep -v "_bucket{" || true
}
echo "== seer-prefill /metrics (http://$prefill_metrics/metrics, buckets left out)"
excerpt "$prefill_metrics"
echo "== seer-decode /metrics (http://$decode_metrics/metrics, buckets left out)"
excerpt "$decode_metrics"
echo "== stopping the servers (SIGTERM: health NOT_SERVING, drain, exit)"
