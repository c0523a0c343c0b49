#!/usr/bin/env python3
"""The dashboard's GPU panels on a GPU machine, through a real Prometheus.

CI's check (tests/ops/check_observability.mjs) runs CPU servers, which export
no GPU gauges; this one runs seer-prefill and seer-decode with --device cuda,
scrapes them with Prometheus (Debian's static binary, carried in the GPU
bundle), sends one request, and evaluates every dashboard expression that
reads a seer_gpu_* series. Each must return one series per server; the
reference for the values is nvidia-smi's own reading of the same GPU.

  check_gpu_panels.py --bin BUNDLE/bin --prometheus BUNDLE/bin/prometheus \
      --model tests/fixtures/llama [--dashboard deploy/observability/seer-dashboard.json]

Exits non-zero naming each check that failed. Needs only the standard library.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child whose stdout and stderr are collected; waits for a pattern."""

    def __init__(self, args):
        self.out = ""
        self.lock = threading.Lock()
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.lock:
                self.out += line

    def wait_for(self, pattern, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                m = re.search(pattern, self.out)
            if m:
                return m
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.p.args[0]}: no /{pattern}/ in:\n{self.out[-3000:]}")

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def start_server(bin_dir, name, extra):
    p = Process([os.path.join(bin_dir, name), "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                 "--device", "cuda"] + extra)
    m = p.wait_for(r"listening on (\S+) metrics on (\S+)")
    p.wait_for(r" ready: ")
    return p, m.group(1), m.group(2)


def query(api, expr):
    url = f"{api}/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        j = json.load(r)
    if j["status"] != "success":
        raise RuntimeError(f"{expr}: {j.get('error')}")
    return j["data"]["result"]


def nvidia_smi(index):
    out = subprocess.check_output(["nvidia-smi", "-i", str(index), "--query-gpu=memory.total,memory.used",
                                   "--format=csv,noheader,nounits"], text=True)
    total, used = (float(x) * 2**20 for x in out.strip().split(","))
    return total, used


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="folder with seer, seer-prefill, seer-decode")
    ap.add_argument("--prometheus", required=True, help="the prometheus binary")
    ap.add_argument("--model", default=os.path.join(ROOT, "tests/fixtures/llama"))
    ap.add_argument("--dashboard", default=os.path.join(ROOT, "deploy/observability/seer-dashboard.json"))
    args = ap.parse_args()

    failures = []

    def check(what, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}", flush=True)
        if not ok:
            failures.append(what)

    dashboard = json.load(open(args.dashboard))
    exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])
             if "seer_gpu_" in t["expr"]]
    check("the dashboard has GPU expressions", len(exprs) > 0)

    children = []
    work = tempfile.mkdtemp(prefix="seer-gpu-panels-")
    try:
        prefill, prefill_grpc, prefill_metrics = start_server(args.bin, "seer-prefill", ["--model", args.model])
        children.append(prefill)
        decode, decode_grpc, decode_metrics = start_server(
            args.bin, "seer-decode", ["--model", args.model, "--prefill", prefill_grpc, "--kv-pool", "1GiB"])
        children.append(decode)
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: seer-prefill
    static_configs: [{{targets: ["{prefill_metrics}"]}}]
  - job_name: seer-decode
    static_configs: [{{targets: ["{decode_metrics}"]}}]
""")
        port = free_port()
        prom = Process([args.prometheus, f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
                        f"--web.listen-address=127.0.0.1:{port}"])
        children.append(prom)
        prom.wait_for("Server is ready to receive web requests", 60)
        api = f"http://127.0.0.1:{port}/api/v1"
        gen = subprocess.run([os.path.join(args.bin, "seer"), "generate", "--addr", decode_grpc, "--ids",
                              ",".join(str(i % 100 + 1) for i in range(300)), "--max-new-tokens", "8"],
                             capture_output=True, text=True, timeout=120)
        check("a request through both servers", gen.returncode == 0, gen.stderr[-500:])
        deadline = time.time() + 30
        while time.time() < deadline and len(query(api, 'seer_gpu_memory_used_bytes')) < 2:
            time.sleep(0.5)

        jobs = {"seer-prefill", "seer-decode"}
        for title, expr in exprs:
            e = expr.replace("$prefill_job", "seer-prefill").replace("$decode_job", "seer-decode")
            result = query(api, e)
            got = {r["metric"].get("job") for r in result}
            check(f'"{title}": {e}', got == jobs, f"series for {sorted(got)}")

        # The values against nvidia-smi (both read the whole device).
        total_smi, used_smi = nvidia_smi(0)
        print(f"\n| job | used (Prometheus) | total (Prometheus) | used (nvidia-smi) | total (nvidia-smi) |")
        print("|---|---|---|---|---|")
        for job in sorted(jobs):
            used = query(api, f'seer_gpu_memory_used_bytes{{job="{job}"}}')
            total = query(api, f'seer_gpu_memory_total_bytes{{job="{job}"}}')
            if not used or not total:
                check(f"{job} exports both gauges", False)
                continue
            u, t = float(used[0]["value"][1]), float(total[0]["value"][1])
            print(f"| {job} | {u / 2**30:.2f} GiB | {t / 2**30:.2f} GiB | {used_smi / 2**30:.2f} GiB | "
                  f"{total_smi / 2**30:.2f} GiB |")
            check(f"{job}: total within 3% of nvidia-smi's", abs(t - total_smi) <= 0.03 * total_smi,
                  f"{t:.0f} vs {total_smi:.0f}")
            check(f"{job}: used within 2 GiB of nvidia-smi's", abs(u - used_smi) <= 2 * 2**30,
                  f"{u:.0f} vs {used_smi:.0f}")
            check(f"{job}: 0 < used <= total", 0 < u <= t, f"{u:.0f} / {t:.0f}")
    finally:
        for c in children:
            c.stop()

    if failures:
        print(f"check_gpu_panels: {len(failures)} check(s) failed: {'; '.join(failures)}", file=sys.stderr)
        return 1
    print("check_gpu_panels: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
