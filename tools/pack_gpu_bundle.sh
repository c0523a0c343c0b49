#!/usr/bin/env bash
# Builds Seer here (Debian, with gRPC and CUDA) and packs what a GPU host
# needs to run it into one folder (default .carry/bundle, ignored by git):
#
#   bin/  seer-prefill, seer-decode, seer, seer-kv-stream-bench (when gRPC is
#         found), seer_gpu_tests, seer-prefill-bench, seer-random-checkpoint,
#         seer-kv-wire-error, seer-kv-quant-bench, seer-l2-read-bench,
#         seer-pool-rate-bench, seer-attention-bench, seer-decode-bench,
#         seer-train, seer-quality-eval, seer-distill-target-bench,
#         seer_nccl_gpu_tests and seer-nccl-kv-bench (when NCCL is found),
#         seer_disagg_gpu_tests (the servers on GPUs; SEER_BIN_DIR=<bundle>/bin
#         points them at the bundle) and prometheus (Debian's static binary,
#         when installed) for tests/ops/check_gpu_panels.py
#   lib/  every shared library those binaries load, from ldd, except glibc,
#         libstdc++, libgcc and the CUDA libraries, which the GPU host has
#
# On the GPU host: LD_LIBRARY_PATH=<bundle>/lib:/usr/local/cuda/lib64
# (docs/GPU.md). tools/gpu_engine_run.sh uses the bundle when it is there.
#
#   tools/pack_gpu_bundle.sh [OUT_DIR]     (SEER_BUNDLE_BUILD: build dir, JOBS: parallel jobs)
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-.carry/bundle}"
build="${SEER_BUNDLE_BUILD:-build-bundle}"
jobs="${JOBS:-2}"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
targets=(seer_gpu_tests seer-prefill-bench seer-decode-bench seer-attention-bench seer-random-checkpoint seer-kv-wire-error
         seer-kv-quant-bench seer-l2-read-bench seer-pool-rate-bench seer-train seer-quality-eval seer-distill-target-bench)
server_targets=()
# The NCCL KV link's tests and benchmark when NCCL was found; the servers and
# the KV stream benchmark when gRPC was.
# (The target list is read once: `ninja ... | grep -q` under pipefail fails
# whenever grep quits before ninja has written everything.)
all_targets="$(ninja -C "$build" -t targets all 2>/dev/null || true)"
for t in seer_nccl_gpu_tests seer-nccl-kv-bench seer-prefill seer-decode seer seer-kv-stream-bench seer_disagg_gpu_tests; do
  if grep -q "^$t:" <<<"$all_targets"; then server_targets+=("$t"); fi
done
if [ ${#server_targets[@]} -eq 0 ]; then
  echo "pack_gpu_bundle: no gRPC server targets in $build (gRPC not found?); packing tests and bench only" >&2
fi
ninja -C "$build" -j "$jobs" "${targets[@]}" "${server_targets[@]}"

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for t in "${targets[@]}" "${server_targets[@]}"; do
  cp "$build/bin/$t" "$out/bin/"
done
if [ -x /usr/bin/prometheus ]; then cp /usr/bin/prometheus "$out/bin/"; fi

# The libraries the host provides itself: the C runtime, the C++ runtime and
# the CUDA toolkit and driver (matching the host's driver matters more than
# matching our build), and NCCL (the GPU hosts have 2.28 in /usr/lib).
host_provided='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libutil\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libnccl\.so|libnvidia|libnvrtc|libnvJitLink)'
for b in "$out"/bin/*; do
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | while read -r name path; do
    if ! [[ "$name" =~ $host_provided ]]; then
      cp -Ln "$path" "$out/lib/$name" 2>/dev/null || true
    fi
  done
done

echo "bundle: $out"
du -sh "$out/bin" "$out/lib"
ls "$out/bin"
echo "$(ls "$out/lib" | wc -l) shared libraries in $out/lib"
