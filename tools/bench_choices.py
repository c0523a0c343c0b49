#!/usr/bin/env python3
"""n choices of one prompt: one Generate call with n against n calls.

Starts seer-prefill and seer-decode (paged decode, the default) on one
machine, then for each prompt length sends the same sampled request twice:
once as one `seer generate --n N` call, and once as N concurrent calls, call
i with --seed S + i (what choice i of the first is). For each it prints the
wall time until every reply is in, how many Prefill calls the prefill server
served, the KV bytes the decode worker received, and the most KV pages the
decode worker held (seer_kv_pages_used, sampled every 5 ms). It fails
(exit 1) when choice i's tokens differ from call i's.

  tools/bench_choices.py [--bin DIR] [--model DIR] [--device cpu|cuda]
                         [--lengths 1024,4096] [--n 4] [--new-tokens 32] [--decode-flag=--FLAG=V ...]
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def die(msg):
    print(f"bench_choices: {msg}", file=sys.stderr)
    sys.exit(1)


def start(cmd, log):
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        text = open(log).read()
        if " ready: " in text:
            m = re.search(r" listening on (\S+) metrics on (\S+)", text)
            return proc, m.group(1), m.group(2)
        if proc.poll() is not None:
            die(f"{cmd[0]} exited:\n{text}")
        time.sleep(0.1)
    die(f"{cmd[0]} did not become ready in 300 s:\n{open(log).read()}")


def metric(addr, name, label=""):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if label and label not in line:
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total


class PeakSampler:
    """The largest value a gauge takes while it runs."""

    def __init__(self, addr, name):
        self.addr, self.name, self.peak, self.stop = addr, name, 0.0, False
        self.thread = threading.Thread(target=self.run)

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, metric(self.addr, self.name))
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def generate(seer, addr, ids_file, new_tokens, seed, n=1):
    cmd = [seer, "generate", "--addr", addr, "--ids", "@" + ids_file, "--max-new-tokens", str(new_tokens),
           "--temperature", "1.0", "--seed", str(seed), "--json", "--timeout", "600"]
    if n > 1:
        cmd += ["--n", str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        die(f"{' '.join(cmd)} failed: {r.stderr}")
    out = json.loads(r.stdout)
    return [c["tokens"] for c in out["choices"]] if n > 1 else [out["tokens"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--model", default="models/seer-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--decode-flag", action="append", default=[],
                    help="a flag for seer-decode, e.g. --decode-flag=--cuda-graphs=false (repeatable)")
    a = ap.parse_args()
    seer = os.path.join(a.bin, "seer")
    vocab = json.load(open(os.path.join(a.model, "config.json")))["vocab_size"]
    work = tempfile.mkdtemp(prefix="seer-choices-")
    procs = []
    try:
        prefill, prefill_addr, prefill_metrics = start(
            [os.path.join(a.bin, "seer-prefill"), "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
             "--model", a.model, "--device", a.device], os.path.join(work, "prefill.log"))
        procs.append(prefill)
        decode, decode_addr, decode_metrics = start(
            [os.path.join(a.bin, "seer-decode"), "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
             "--model", a.model, "--prefill", prefill_addr, "--device", a.device] + a.decode_flag,
            os.path.join(work, "decode.log"))
        procs.append(decode)
        page_bytes = metric(decode_metrics, "seer_kv_cache_capacity_bytes") / max(
            1.0, metric(decode_metrics, "seer_kv_pages_total"))
        print(f"n = {a.n} choices of {a.new_tokens} sampled tokens; {a.model} on {a.device}; "
              f"KV page {page_bytes / 1024:.0f} KiB\n")
        print("| prompt | how | wall ms | Prefill calls | KV received MB | peak KV pages (MB) |")
        print("|---|---|---|---|---|---|")
        for length in [int(x) for x in a.lengths.split(",")]:
            rng = random.Random(length)
            ids_file = os.path.join(work, f"ids{length}.txt")
            with open(ids_file, "w") as f:
                f.write(",".join(str(rng.randrange(3, vocab)) for _ in range(length)))
            generate(seer, decode_addr, ids_file, 2, 1)  # warm up at this length
            rows = {}
            for how in ("one call, n", "n calls"):
                calls0 = metric(prefill_metrics, "seer_prefill_requests_total", 'code="OK"')
                kv0 = metric(decode_metrics, "seer_kv_received_bytes_total")
                t0 = time.time()
                with PeakSampler(decode_metrics, "seer_kv_pages_used") as peak:
                    if how == "one call, n":
                        replies = generate(seer, decode_addr, ids_file, a.new_tokens, 100, a.n)
                    else:
                        replies = [None] * a.n
                        def one(i):
                            replies[i] = generate(seer, decode_addr, ids_file, a.new_tokens, 100 + i)[0]
                        threads = [threading.Thread(target=one, args=(i,)) for i in range(a.n)]
                        for t in threads:
                            t.start()
                        for t in threads:
                            t.join()
                wall = (time.time() - t0) * 1e3
                calls = metric(prefill_metrics, "seer_prefill_requests_total", 'code="OK"') - calls0
                kv = metric(decode_metrics, "seer_kv_received_bytes_total") - kv0
                rows[how] = replies
                print(f"| {length} | {how} | {wall:.0f} | {calls:.0f} | {kv / 1e6:.1f} | "
                      f"{peak.peak:.0f} ({peak.peak * page_bytes / 1e6:.1f}) |", flush=True)
            if rows["one call, n"] != rows["n calls"]:
                where = []
                for i, (a, b) in enumerate(zip(rows["one call, n"], rows["n calls"])):
                    at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
                    if at is not None or len(a) != len(b):
                        where.append(f"choice {i} from token {at if at is not None else min(len(a), len(b))}: "
                                     f"{a[at or 0:][:6]} against call {i}'s {b[at or 0:][:6]}")
                die(f"prompt {length}: " + "; ".join(where))
        print("\nchoice i's tokens equal call i's (--seed 100 + i) at every length")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
