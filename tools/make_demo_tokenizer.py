#!/usr/bin/env python3
"""Writes the bundled demo model's tokenizer (tests/fixtures/llama): a
Llama-2-style (SentencePiece-converted) BPE tokenizer.json of exactly the
model's 128 ids -- <unk>, <s>, </s>, the word marker U+2581, the 94 printable
ASCII characters and 30 merges of common English pairs -- plus a
tokenizer_config.json with a small chat template. The model's weights are
random, so what it says is noise; the tokenizer lets the demo speak text.

    python3 tools/make_demo_tokenizer.py [OUT_DIR]
"""

import json
import os
import sys

MERGES = [("▁", "t"), ("▁", "a"), ("t", "h"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("r", "e"),
          ("o", "n"), ("▁t", "h"), ("e", "n"), ("a", "t"), ("o", "u"), ("e", "d"), ("h", "a"), ("t", "o"),
          ("o", "r"), ("i", "t"), ("e", "s"), ("i", "s"), ("▁", "s"), ("▁", "w"), ("n", "d"), ("▁", "o"),
          ("▁", "i"), ("i", "ng"), ("n", "g"), ("▁th", "e"), ("a", "r"), ("▁", "c")]


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "llama")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for c in range(33, 127):
        vocab[chr(c)] = len(vocab)
    merges = []
    for a, b in MERGES:
        if b not in vocab:  # "ng" before "i"+"ng": add the part first
            continue
        vocab[a + b] = len(vocab)
        merges.append(f"{a} {b}")
    for a, b in MERGES:  # parts that only existed after their own merge
        if a + b not in vocab and a in vocab and b in vocab:
            vocab[a + b] = len(vocab)
            merges.append(f"{a} {b}")
    assert len(vocab) == 128, len(vocab)
    special = lambda i, s: {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    config = {
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
        "model_max_length": 2048,
        "chat_template": ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}"),
    }
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=1)
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
    print(f"wrote {out}/tokenizer.json ({len(vocab)} ids, {len(merges)} merges) and tokenizer_config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
