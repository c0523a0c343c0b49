#!/usr/bin/env bash
# The README's main-job command: installs dependencies, builds Seer, then runs
# the disaggregated demo (tools/demo.sh) on the bundled model: a prefill server
# and a decode worker on loopback, one `seer generate` request, the tokens, the
# time to first token and an excerpt of both servers' metrics.
# Runs on the GPU when one is present, else on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh
echo "== building (Release)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
exec bash tools/demo.sh "$@"
