#!/usr/bin/env python3
"""Tests of tools/train_small_model.py that need no torch: the passkey
documents, the text extraction and the whole `prepare` step on small
stand-ins for the Debian packages (a fake `bible`, documentation folders, an
essays file). The `train` step needs the GPU machine (docs/TRAINING.md)."""

import gzip
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_small_model as tsm  # noqa: E402


class PasskeyTest(unittest.TestCase):
    def test_document_layout(self):
        doc = tsm.passkey_document(2, 0.5, "12345")
        self.assertEqual(doc, tsm.PASSKEY_INTRO + tsm.PASSKEY_FILLER + tsm.passkey_line("12345") + tsm.PASSKEY_FILLER +
                         tsm.PASSKEY_QUESTION)
        self.assertTrue(tsm.passkey_document(3, 0.0, "1").startswith(tsm.PASSKEY_INTRO + tsm.passkey_line("1")))
        self.assertTrue(tsm.passkey_document(3, 1.0, "1").endswith(tsm.passkey_line("1") + tsm.PASSKEY_QUESTION))
        self.assertEqual(tsm.passkey_document(0, 0.5, "7"), tsm.PASSKEY_INTRO + tsm.passkey_line("7") +
                         tsm.PASSKEY_QUESTION)

    def test_depth_rounds_half_away_from_zero_like_lround(self):
        # 0.5 * 5 = 2.5 -> key before filler 3 (C's lround), not 2 (Python's round).
        doc = tsm.passkey_document(5, 0.5, "9")
        self.assertEqual(doc.count(tsm.PASSKEY_FILLER), 5)
        self.assertEqual(doc.index(tsm.passkey_line("9")),
                         len(tsm.PASSKEY_INTRO) + 3 * len(tsm.PASSKEY_FILLER))

    def test_command_prints_the_document(self):
        out = subprocess.run([sys.executable, os.path.join(HERE, "train_small_model.py"), "passkey-example",
                              "--fillers", "3", "--depth", "0.5", "--key", "40917"], check=True, capture_output=True,
                             text=True).stdout
        self.assertEqual(out, tsm.passkey_document(3, 0.5, "40917"))


class TextTest(unittest.TestCase):
    def test_html_to_text_drops_markup_and_scripts(self):
        page = "<html><head><style>p {}</style><script>var x;</script></head><body><p>A &amp; B</p>\n<p>C</p></body>"
        self.assertEqual(tsm.html_to_text(page), "A & B\nC")

    def test_bible_books_without_references(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bible.txt")
            with open(path, "w") as f:
                f.write("Ge1:1 In the beginning\nGe1:2 And the earth\n   was void.\nEx1:1 Now these\n1Sa1:1 Now there\n")
            books = tsm.bible_documents(f"cat {path}")
        self.assertEqual(books, ["In the beginning\nAnd the earth was void.", "Now these", "Now there"])

    def test_capped_is_deterministic_and_bounded(self):
        docs = [f"doc {i} " * 10 for i in range(50)]
        a, b = tsm.capped(docs, 600, "x"), tsm.capped(docs, 600, "x")
        self.assertEqual(a, b)
        self.assertLessEqual(sum(len(d) for d in a), 600)
        self.assertGreater(len(a), 3)
        self.assertEqual(tsm.capped(docs, 10 ** 6, "x"), docs)

    def test_split_heldout(self):
        self.assertEqual(tsm.split_heldout(list("abcdefghij"), 0.1), (list("abcdefghi"), ["j"]))
        self.assertEqual(tsm.split_heldout(["a", "b"], 0.01), (["a"], ["b"]))
        self.assertEqual(tsm.split_heldout(["a"], 0.5), (["a"], []))


class PrepareTest(unittest.TestCase):
    def test_prepare_on_stand_ins(self):
        with tempfile.TemporaryDirectory() as d:
            bible = os.path.join(d, "bible.txt")
            with open(bible, "w") as f:
                for book in ("Ge", "Ex", "Le"):
                    for v in range(1, 4):
                        f.write(f"{book}1:{v} verse {v} of {book}\n")
            linux = os.path.join(d, "linux", "html", "_sources", "mm")
            python = os.path.join(d, "python", "html", "_sources")
            os.makedirs(linux)
            os.makedirs(python)
            for i in range(60):
                with open(os.path.join(linux, f"page{i:02d}.rst.txt"), "w") as f:
                    f.write(f"Kernel page {i}\n" + "memory " * 30)
            with open(os.path.join(linux, "..", "index.html"), "w") as f:
                f.write("<p>not a source</p>")
            with gzip.open(os.path.join(python, "tutorial.rst.txt.gz"), "wt") as f:
                f.write("compressed, not matched by the pattern")
            for i in range(5):
                with open(os.path.join(python, f"lib{i}.rst.txt"), "w") as f:
                    f.write(f"Python page {i}")
            essays = os.path.join(d, "essays.json")
            with open(essays, "w") as f:
                json.dump({"text": "\n\n".join(f"Essay paragraph {i}. " + "word " * 2000 for i in range(20))}, f)
            out = os.path.join(d, "out")
            rc = tsm.main(["prepare", "--out", out, "--essays", essays, "--bible-cmd", f"cat {bible}",
                           "--linux-doc-dir", os.path.join(d, "linux"), "--python-doc-dir",
                           os.path.join(d, "python"), "--linux-doc-mb", "0"])
            self.assertEqual(rc, 0)
            with gzip.open(os.path.join(out, "train.jsonl.gz"), "rt") as f:
                train = [json.loads(line) for line in f]
            with open(os.path.join(out, "heldout.txt")) as f:
                heldout = f.read()
            with open(os.path.join(out, "sources.json")) as f:
                sources = json.load(f)["sources"]

        by_source = {}
        for doc in train:
            by_source.setdefault(doc["source"], []).append(doc["text"])
        # Three books, one held out (the last); verse references gone.
        self.assertEqual(sources["bible-kjv"]["documents"], 3)
        self.assertEqual(sorted(by_source["bible-kjv"]), ["verse 1 of Ex\nverse 2 of Ex\nverse 3 of Ex",
                                                         "verse 1 of Ge\nverse 2 of Ge\nverse 3 of Ge"])
        self.assertIn("verse 1 of Le", heldout)
        # --linux-doc-mb 0: the cap keeps none of the 60 pages.
        self.assertEqual(sources["linux-doc"]["files"], 60)
        self.assertEqual(sources["linux-doc"]["documents"], 0)
        self.assertNotIn("linux-doc", by_source)
        # Only the *.rst.txt sources, not the HTML or the .gz.
        self.assertEqual(sources["python3-doc"]["files"], 5)
        self.assertEqual(len(by_source["python3-doc"]) + sources["python3-doc"]["heldout_documents"], 5)
        self.assertFalse(any("compressed" in t for t in by_source["python3-doc"]))
        # A tenth of the essays held out, and the held-out text starts with them.
        essays_held = sources["paul-graham-essays"]["heldout_documents"]
        self.assertGreaterEqual(essays_held, 1)
        self.assertTrue(heldout.startswith("Essay paragraph"))
        self.assertFalse(any(t in heldout for t in by_source["paul-graham-essays"]))

    def test_prepare_with_nothing_fails(self):
        with tempfile.TemporaryDirectory() as d:
            empty = os.path.join(d, "empty")
            os.makedirs(empty)
            rc = tsm.main(["prepare", "--out", os.path.join(d, "out"), "--essays", os.path.join(d, "missing.json"),
                           "--bible-cmd", "true", "--linux-doc-dir", empty, "--python-doc-dir", empty])
            self.assertEqual(rc, 1)


class TrainArgumentsTest(unittest.TestCase):
    def test_shape_checks_happen_before_torch(self):
        with self.assertRaises(SystemExit):
            tsm.main(["train", "--data", "x", "--out", "y", "--hidden", "100"])
        with self.assertRaises(SystemExit):
            tsm.main(["train", "--data", "x", "--out", "y", "--hidden", "384", "--kv-heads", "4"])

    def test_default_model_fits_24_mb(self):
        # The default shape's bf16 size, counted as save_pretrained stores it
        # (tied embeddings: one vocab x hidden matrix).
        v, h, layers, kv, inter = 4096, 384, 6, 2, 1024
        per_layer = h * h + 2 * h * kv * 64 + h * h + 3 * h * inter + 2 * h
        params = v * h + layers * per_layer + h
        self.assertLess(2 * params, 24e6)
        self.assertGreater(2 * params, 20e6)

    def test_llama3_inv_freq(self):
        f = tsm.llama3_inv_freq(500000.0, 64, 4.0, 1.0, 4.0, 2048)
        self.assertEqual(len(f), 32)
        self.assertEqual(f[0], 1.0)  # high frequency: unchanged
        base = 1.0 / 500000.0 ** (62 / 64)
        self.assertAlmostEqual(f[31], base / 4.0)  # low frequency: divided by the factor


if __name__ == "__main__":
    unittest.main()
