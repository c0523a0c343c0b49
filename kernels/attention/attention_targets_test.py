#!/usr/bin/env python3
"""attention_targets.py on logs of one device call (2026-12-02, H200), and on
the same logs with one number moved across a target's edge."""

import contextlib
import io
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_targets as at  # noqa: E402

TABLE = """\
| dtype | d | seq | sparsity | kernel | ms | effective TFLOP/s | computed TFLOP/s | vs best SDPA (dense) | vs Flex |
|---|---|---|---|---|---|---|---|---|---|
| bf16 | 64 | 8192 | 0.00 | sdpa cudnn | 0.647 | 424.8 | 424.8 | 1.00x | 0.68x |
| bf16 | 128 | 8192 | 0.00 | flex block64 | 2.307 | 238.3 | 240.1 | 2.42x | 1.00x |
| bf16 | 128 | 8192 | 0.00 | sdpa cudnn | 0.955 | 575.6 | 575.6 | 1.00x | 0.41x |
| bf16 | 128 | 8192 | 0.00 | sdpa flash | 1.779 | 309.1 | 309.1 | 1.86x | 0.77x |
| bf16 | 128 | 8192 | 0.00 | seer v6 sm90 two-block steps | 0.923 | 595.6 | 600.3 | 0.97x | 0.40x |
| bf16 | 128 | 8192 | 0.90 | flex block64 | 0.371 | 1480.8 | 149.3 | - | 1.00x |
| bf16 | 128 | 8192 | 0.90 | seer v6 sm90 two-block steps | 0.175 | 3142.5 | 316.9 | - | 0.47x |
| bf16 | 128 | 32768 | 0.00 | sdpa cudnn | 14.791 | 594.7 | 594.7 | 1.00x | 0.45x |
| bf16 | 128 | 32768 | 0.00 | seer v6 sm90 two-block steps | 14.169 | 620.8 | 622.0 | 0.96x | 0.43x |
| bf16 | 128 | 32768 | 0.50 | seer v6 sm90 two-block steps | 8.320 | 1057.2 | 529.6 | - | 0.50x |
| bf16 | 128 | 32768 | 0.90 | seer v6 sm90 two-block steps | 1.933 | 4549.7 | 455.9 | - | 0.52x |
| bf16 | 128 | 131072 | 0.00 | sdpa cudnn | 248.459 | 566.4 | 566.4 | 1.00x | 0.45x |
| bf16 | 128 | 131072 | 0.00 | seer v6 sm90 two-block steps | 226.335 | 621.8 | 622.1 | 0.91x | 0.41x |
| bf16 | 128 | 131072 | 0.50 | seer v6 sm90 two-block steps | 128.061 | 1099.0 | 549.8 | - | 0.47x |
| bf16 | 128 | 131072 | 0.90 | flex block64 | 55.799 | 2522.2 | 252.3 | - | 1.00x |
| bf16 | 128 | 131072 | 0.90 | seer v6 sm90 two-block steps | 27.681 | 5084.3 | 508.7 | - | 0.50x |

| d | seq | gate (nz_ratio=0.1, 32 q heads, 8 kv) | ms | % of attention at 0.9 sparsity (v6 sm90 two-block steps) |
|---|---|---|---|---|
| 128 | 8192 | unfused (old) | 0.075 | 42.7% |
| 128 | 8192 | fused | 0.062 | 35.4% |
| 128 | 131072 | unfused (old) | 0.800 | 2.9% |
| 128 | 131072 | fused | 2.038 | 7.4% |
"""

PREFILL = """\
| seq | mode | density | TTFT ms (median) | runs | peak engine alloc GiB | device used GiB |
|---|---|---|---|---|---|---|
| 131072 | dense | 1.000 | 9836.7 | 1 | 37.74 | 38.33 |
| 131072 | nz_ratio=0.1 | 0.102 | 3760.5 | 1 | 38.71 | 39.29 |

| seq | mode | GEMMs (q/k/v, o, MLP, lm_head) | attention | gate | rest (embed, RoPE, KV write) | stages sum ms | wall ms |
|---|---|---|---|---|---|---|---|
| 131072 | dense | 2692 (27%) | 7139 (73%) | 0 (0%) | 14 (0%) | 9844.9 | 9845.0 |
"""

HF = """\
| seq | TTFT ms (median) | runs | peak allocated GiB |
|---|---|---|---|
| 8192 | 334.4 | 1 | 16.90 |
| 131072 | 12133.3 | 1 | 45.55 |
"""


class TargetsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def write(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def verdicts(self, table=TABLE, prefill=PREFILL, hf=HF, extra=()):
        argv = [self.write("table.md", table)]
        if prefill is not None:
            argv += ["--prefill", self.write("prefill.log", prefill)]
        if hf is not None:
            argv += ["--hf", self.write("hf.log", hf)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(at.main(argv + list(extra)), 0)
        rows = {}
        for line in out.getvalue().splitlines()[3:]:
            target, measured, verdict = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[target] = (measured, verdict)
        self.assertEqual(len(rows), 7, out.getvalue())
        return rows

    def test_the_call_of_2026_12_02(self):
        rows = self.verdicts()
        dense = rows["dense <= SDPA cuDNN at 8k / 32k / 128k"]
        self.assertEqual(dense[1], "met")
        self.assertIn("8k 0.923 / 0.955 ms = 0.966x", dense[0])
        sparse = rows["sparse computed TFLOP/s >= 0.9x own dense, 32k and 128k"]
        self.assertEqual(sparse[1], "missed")
        self.assertIn("32k s=0.9: 0.733", sparse[0])
        self.assertIn("128k s=0.5: 0.884", sparse[0])
        self.assertEqual(rows["128k s = 0.9 <= 0.5x FlexAttention"],
                         ("27.681 / 55.799 ms = 0.496x", "met"))
        # The engine's gate at 8k is the fused one, at 128k the unfused one.
        self.assertEqual(rows["gate <= 25% of attention at 8k, s = 0.9"],
                         ("fused 0.062 / 0.175 ms = 35.4%", "missed"))
        self.assertEqual(rows["gate <= 3% of attention at 128k, s = 0.9"],
                         ("unfused 0.800 / 27.681 ms = 2.9%", "met"))
        self.assertEqual(rows["prefill 128k nz_ratio=0.1 <= 0.33x HF sdpa"][1], "met")
        self.assertEqual(rows["prefill 128k dense <= 0.9x HF sdpa"],
                         ("9836.7 / 12133.3 ms = 0.811x", "met"))

    def test_each_edge_flips_its_verdict(self):
        flex = TABLE.replace("| 55.799 |", "| 55.000 |")  # 27.681 / 55.0 = 0.503
        self.assertEqual(self.verdicts(flex)["128k s = 0.9 <= 0.5x FlexAttention"][1], "missed")
        gate = TABLE.replace("| unfused (old) | 0.800 |", "| unfused (old) | 0.840 |")  # 3.03%
        self.assertEqual(self.verdicts(gate)["gate <= 3% of attention at 128k, s = 0.9"][1], "missed")
        slow = TABLE.replace("| 226.335 |", "| 248.500 |")  # 1.0002x cuDNN at 128k
        self.assertEqual(self.verdicts(slow)["dense <= SDPA cuDNN at 8k / 32k / 128k"][1], "missed")
        hf = HF.replace("12133.3", "11300.0")  # 3760.5 / 11300 = 0.333
        self.assertEqual(self.verdicts(hf=hf)["prefill 128k nz_ratio=0.1 <= 0.33x HF sdpa"][1], "missed")
        # Every sparse rate just over 0.9x of dense (560.0 / 622.1 = 0.9002).
        rate = TABLE
        for old in ("| 529.6 |", "| 455.9 |", "| 549.8 |", "| 508.7 |"):
            rate = rate.replace(old, "| 560.0 |")
        self.assertEqual(self.verdicts(rate)["sparse computed TFLOP/s >= 0.9x own dense, 32k and 128k"][1], "met")

    def test_rows_of_f32_gate_weights_are_not_judged(self):
        # --gate-weights=bf16,f32: the f32 rows come after the bf16 ones and
        # must not take their place.
        f32 = TABLE.replace("| 128 | 131072 | fused | 2.038 | 7.4% |\n",
                            "| 128 | 131072 | fused | 2.038 | 7.4% |\n"
                            "| 128 | 131072 | unfused (old), f32 weights | 0.850 | 3.1% |\n"
                            "| 128 | 8192 | fused, f32 weights | 0.070 | 40.0% |\n")
        self.assertNotEqual(f32, TABLE)
        rows = self.verdicts(f32)
        self.assertEqual(rows["gate <= 3% of attention at 128k, s = 0.9"],
                         ("unfused 0.800 / 27.681 ms = 2.9%", "met"))
        self.assertEqual(rows["gate <= 25% of attention at 8k, s = 0.9"],
                         ("fused 0.062 / 0.175 ms = 35.4%", "missed"))

    def test_missing_rows_are_never_met(self):
        no_cudnn = "\n".join(line for line in TABLE.splitlines() if "8192 | 0.00 | sdpa cudnn" not in line)
        self.assertEqual(self.verdicts(no_cudnn)["dense <= SDPA cuDNN at 8k / 32k / 128k"][1],
                         "partly measured, met where measured")
        rows = self.verdicts(prefill=None, hf=None)
        self.assertEqual(rows["prefill 128k dense <= 0.9x HF sdpa"], ("not measured", "not measured"))
        # Without the gate table no kernel is named: nothing of Seer's is judged.
        no_gate = TABLE.split("\n\n")[0] + "\n"
        rows = self.verdicts(no_gate)
        self.assertEqual(rows["128k s = 0.9 <= 0.5x FlexAttention"][1], "not measured")
        rows = self.verdicts(no_gate, extra=["--kernel", "seer v6 sm90 two-block steps"])
        self.assertEqual(rows["128k s = 0.9 <= 0.5x FlexAttention"][1], "met")


if __name__ == "__main__":
    unittest.main()
