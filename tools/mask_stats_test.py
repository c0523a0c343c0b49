#!/usr/bin/env python3
"""tools/mask_stats.py on masks whose sharing is known by construction: a
SEERMSK1 round trip, a `seer run --dump`-shaped safetensors file, and the
uniform comparison's expectation 1 - p/2 for rows that keep a fraction p."""

import contextlib
import io
import json
import os
import random
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mask_stats as ms  # noqa: E402


def causal_keep(heads, nb, kept):
    """keep bytes with kept(h, qb, kb) -> bool over the causal triangle."""
    out = bytearray(heads * nb * nb)
    for h in range(heads):
        for qb in range(nb):
            for kb in range(qb + 1):
                if kept(h, qb, kb):
                    out[(h * nb + qb) * nb + kb] = 1
    return bytes(out)


def write_dump(path, layers):
    """A safetensors file holding layers.<i>.block_mask, as `seer run --dump` writes them."""
    header, blobs, offset = {}, [], 0
    for i, (heads, nb, keep) in enumerate(layers):
        header[f"layers.{i}.block_mask"] = {"dtype": "U8", "shape": [heads, nb, nb],
                                            "data_offsets": [offset, offset + len(keep)]}
        blobs.append(keep)
        offset += len(keep)
    header["logits"] = {"dtype": "F32", "shape": [1, 1], "data_offsets": [offset, offset + 4]}
    blobs.append(struct.pack("<f", 0.0))
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


class MaskStatsTest(unittest.TestCase):
    def test_dense_rows_share_everything_but_the_upper_diagonal(self):
        nb = 8
        rows = ms.rows_of(1, nb, causal_keep(1, nb, lambda h, q, k: True))
        density, pairs, _ = ms.share_ratios(rows, 1)
        self.assertEqual(density, 1.0)
        # Rows 2i and 2i+1 keep 2i+1 and 2i+2 blocks; their union is 2i+2.
        expect = sum(2 * i + 2 for i in range(nb // 2)) / sum(4 * i + 3 for i in range(nb // 2))
        self.assertAlmostEqual(pairs, expect)

    def test_disjoint_rows_share_nothing(self):
        nb = 6
        # Even rows keep even key blocks, odd rows odd ones: no block in both rows of a pair.
        keep = causal_keep(1, nb, lambda h, q, k: k % 2 == q % 2)
        _, pairs, _ = ms.share_ratios(ms.rows_of(1, nb, keep), 1)
        self.assertEqual(pairs, 1.0)

    def test_group_ratio_of_identical_heads(self):
        nb, group = 5, 4
        keep = causal_keep(group, nb, lambda h, q, k: (q + k) % 3 == 0 or k == q)
        _, _, grp = ms.share_ratios(ms.rows_of(group, nb, keep), group)
        self.assertAlmostEqual(grp, 1 / group)

    def test_uniform_rows_keep_lengths_and_diagonals_and_share_p_squared(self):
        nb, p = 256, 0.25
        rng = random.Random(7)
        keep = causal_keep(2, nb, lambda h, q, k: k == q or rng.random() < p)
        rows = ms.rows_of(2, nb, keep)
        uni = ms.uniform_like(rows, random.Random(3))
        for h in range(2):
            for qb in range(nb):
                self.assertEqual(len(uni[h][qb]), len(rows[h][qb]))
                self.assertEqual(qb in uni[h][qb], qb in rows[h][qb])
                self.assertTrue(all(0 <= k <= qb for k in uni[h][qb]))
        _, pairs, _ = ms.share_ratios(uni, 1)
        self.assertAlmostEqual(pairs, 1 - p / 2, delta=0.02)

    def test_dump_to_seermsk_round_trip(self):
        nb = 4
        a = causal_keep(2, nb, lambda h, q, k: (h + q + k) % 2 == 0)
        b = causal_keep(2, nb, lambda h, q, k: k == q)
        with tempfile.TemporaryDirectory() as d:
            dump = os.path.join(d, "dump.safetensors")
            out = os.path.join(d, "gate.bin")
            write_dump(dump, [(2, nb, a), (2, nb, b)])
            masks = ms.read_dump_masks(dump)
            self.assertEqual([m[0] for m in masks], ["layers.0", "layers.1"])
            uni = os.path.join(d, "uniform.bin")
            with contextlib.redirect_stdout(io.StringIO()) as text:
                self.assertEqual(ms.main([dump, "--write-mask", out, "--write-uniform", uni, "--seq-len", "250"]), 0)
            self.assertIn("| layers.1 | 2 | 4 | 0.400 | 1.000 |", text.getvalue())
            seq_len, block, [(_, heads, got_nb, keep)] = ms.read_seermsk(out)
            self.assertEqual((seq_len, block, heads, got_nb), (250, 64, 4, nb))
            self.assertEqual(keep, a + b)
            # The uniform masks: the same row lengths and diagonals, on the causal triangle.
            _, _, [(_, _, _, ukeep)] = ms.read_seermsk(uni)
            for row in range(heads * nb):
                qb = row % nb
                got, want = ukeep[row * nb:(row + 1) * nb], keep[row * nb:(row + 1) * nb]
                self.assertEqual(sum(got), sum(want))
                self.assertEqual(got[qb], want[qb])
                self.assertFalse(any(got[qb + 1:]))

    def test_rejects_what_it_cannot_read(self):
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "bad.bin")
            with open(bad, "wb") as f:
                f.write(b"NOTAMASK" + bytes(16))
            with self.assertRaisesRegex(ValueError, "not a SEERMSK1 mask"):
                ms.read_seermsk(bad)
            empty = os.path.join(d, "empty.safetensors")
            write_dump(empty, [])
            with self.assertRaisesRegex(ValueError, "no block_mask tensors"):
                ms.read_dump_masks(empty)
            # The command line says what it could not read and exits 1, no traceback.
            for path, message in ((bad, "not a SEERMSK1 mask"), (os.path.join(d, "missing.bin"), "No such file")):
                with contextlib.redirect_stderr(io.StringIO()) as err:
                    self.assertEqual(ms.main([path]), 1)
                self.assertIn(message, err.getvalue())


if __name__ == "__main__":
    unittest.main()
