#!/usr/bin/env bash
# When does seer-prefill free the KV cache of a client that stopped reading?
#
# Starts seer-prefill on the bundled model (CPU, --write-stall-seconds 2),
# runs `seer prefill` on a 4,096-token prompt (24 MiB of float32 KV), stops
# the client (SIGSTOP) a second into the transfer, and prints, every half
# second while anything changes (15 s), the server's KV cache bytes, its write
# stalls and its requests in flight, timed from the stop. The writes that
# follow the stop fill the socket the client no longer reads; gRPC lets such
# a write go only when the connection ends, so nothing the stream holds at
# the cancel may keep the cache (docs/KV_TRANSPORT.md, section 4).
#
# A measurement, not a test: whether a write gets stuck in the socket, or
# waits for HTTP/2 flow control (released at the cancel either way), depends
# on how far the client's window had grown when it stopped, which depends on
# the machine's load. On an idle 2-core machine the writes mostly wait for
# flow control; with two busy loops beside it (`yes > /dev/null &`, twice)
# they got stuck in every run (docs/KV_TRANSPORT.md, section 4, has a table).
# The test that always gets a write stuck uses a hand-written HTTP/2 client
# instead (Robustness.AStallCancelFreesTheKvCacheWhileAWriteIsStuckInTheSocket).
#
#   tools/stalled_client_kv.sh [--bin DIR]   (default: build/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/bin
[ "${1:-}" = --bin ] && bin=$2
out=$(mktemp -d)
trap 'kill -CONT $cli 2>/dev/null; kill $cli $srv 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT
python3 -c "import random; random.seed(1); print(','.join(str(random.randrange(10, 4000)) for _ in range(4096)))" \
  > "$out/ids.txt"
"$bin/seer-prefill" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --model models/seer-small --device cpu \
  --write-stall-seconds 2 --chunk-bytes 1048576 > "$out/server.out" 2> "$out/server.err" &
srv=$!
for _ in $(seq 600); do grep -q " ready: " "$out/server.out" 2>/dev/null && break; sleep 0.1; done
grpc=$(sed -n 's/.* listening on \([^ ]*\) metrics on \([^ ]*\).*/\1/p' "$out/server.out" | head -1)
metrics=$(sed -n 's/.* listening on \([^ ]*\) metrics on \([^ ]*\).*/\2/p' "$out/server.out" | head -1)
metric() { curl -s "http://$metrics/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
"$bin/seer" prefill --addr "$grpc" --ids "@$out/ids.txt" > "$out/client.out" 2>&1 &
cli=$!
for _ in $(seq 600); do
  b=$(metric seer_kv_cache_bytes)
  [ -n "$b" ] && [ "${b%.*}" != 0 ] && break
  sleep 0.05
done
sleep 1
kill -STOP "$cli"
stopped=$(date +%s.%N)
printf '%-12s %-18s %-14s %s\n' "since stop" "kv_cache_bytes" "write_stalls" "inflight"
for _ in $(seq 30); do
  printf '%-12.2f %-18s %-14s %s\n' "$(echo "$(date +%s.%N) - $stopped" | bc)" "$(metric seer_kv_cache_bytes)" \
    "$(metric seer_stream_write_stalls_total)" "$(metric seer_prefill_inflight_requests)"
  sleep 0.5
done | awk 'NR == 1 || $2 != a || $3 != b || $4 != c { print } { a = $2; b = $3; c = $4 }'
