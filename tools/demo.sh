#!/usr/bin/env bash
# The disaggregated demo on one machine: seer-prefill and seer-decode on
# loopback (ports picked by the kernel, read from their startup lines) with the
# bundled model, its SeerAttention gates and its tokenizer; one `seer generate`
# request of token ids (the tokens and time to first token), one of text, one
# OpenAI-style /v1/completions call over HTTP; an excerpt of both servers'
# /metrics; and the servers stopped on the way out (SIGTERM, graceful drain).
#
# Builds nothing: run it after the build (tools/quickstart.sh does both).
#   SEER_BUILD_DIR   build directory holding bin/ (default: build)
#   SEER_DEVICE      cpu, cuda or auto (default: auto: the GPU when there is one)
#   SEER_PROMPT_LEN  prompt tokens (default 1000: 16 attention blocks of 64)
#   SEER_NEW_TOKENS  tokens to generate (default 16)
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${SEER_BUILD_DIR:-build}/bin"
device="${SEER_DEVICE:-auto}"
prompt_len="${SEER_PROMPT_LEN:-1000}"
new_tokens="${SEER_NEW_TOKENS:-16}"
model=tests/fixtures/llama
gates=tests/fixtures/llama_gates

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
  --device "$device" >"$work/prefill.log" 2>"$work/prefill.log.err" &
pids+=($!)
addrs="$(wait_ready "$work/prefill.log" seer-prefill)"
read -r prefill_addr prefill_metrics <<<"$addrs"
grep -m1 " ready: " "$work/prefill.log"

echo "== starting seer-decode (pulls KV from $prefill_addr)"
"$bin/seer-decode" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --http 127.0.0.1:0 --model "$model" \
  --prefill "$prefill_addr" --device "$device" >"$work/decode.log" 2>"$work/decode.log.err" &
pids+=($!)
addrs="$(wait_ready "$work/decode.log" seer-decode)"
read -r decode_addr decode_metrics <<<"$addrs"
http_addr="$(grep -m1 " http on " "$work/decode.log" | awk '{print $4}')"
grep -m1 " ready: " "$work/decode.log"

# A deterministic prompt over the fixture's 128-token vocabulary.
ids=""
for ((i = 0; i < prompt_len; i++)); do ids+="$(((i * 37 + (i / 7) * 11 + 5) % 128)),"; done
echo "$ids" >"$work/prompt.ids"

echo "== seer generate --addr $decode_addr ($prompt_len prompt tokens, $new_tokens new)"
echo -n "tokens: "
"$bin/seer" generate --addr "$decode_addr" --ids "@$work/prompt.ids" --max-new-tokens "$new_tokens"

# The bundled model is tiny and random: its text is gibberish, but it is the
# text the model's tokenizer makes of the tokens it chose.
text="one two three four five six seven eight nine ten"
echo "== seer generate --prompt '$text' (the server tokenizes; the reply streams as text)"
"$bin/seer" generate --addr "$decode_addr" --prompt "$text" --max-new-tokens "$new_tokens"

echo "== POST http://$http_addr/v1/completions (the OpenAI API on seer-decode --http)"
curl -s "http://$http_addr/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"llama\", \"prompt\": \"$text\", \"max_tokens\": $new_tokens, \"temperature\": 0}"
echo

excerpt() {
  curl -s "http://$1/metrics" | grep -E "^seer_" | grep -v "_bucket{" || true
}
echo "== seer-prefill /metrics (http://$prefill_metrics/metrics, buckets left out)"
excerpt "$prefill_metrics"
echo "== seer-decode /metrics (http://$decode_metrics/metrics, buckets left out)"
excerpt "$decode_metrics"
echo "== stopping the servers (SIGTERM: health NOT_SERVING, drain, exit)"
