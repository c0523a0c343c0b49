#!/usr/bin/env python3
"""Makes the text/ test vectors with Hugging Face `tokenizers` and `transformers`.

Runs on the GPU machine (where both are installed; no network there):

    PYTHONUNBUFFERED=1 python3 make_tokenizer_fixtures.py --out OUT \
        --essays PaulGrahamEssays.json --templates TEMPLATE_DIR

It trains small tokenizers in the shape of the real families (Llama 3 and
Qwen2 byte-level BPE with a split regex, GPT-2 and RoBERTa byte-level BPE,
Llama 2 / Mistral SentencePiece BPE with byte fallback), writes each as a
checkpoint-style folder (tokenizer.json + tokenizer_config.json) and records
what Hugging Face gives for hundreds of test strings: ids with and without
special tokens, decode with and without skip_special_tokens, the
pre-tokenizer's pieces, the normaliser's output, decodes of random id
streams, and a hash of the ids of a long generated document. It also renders
the real chat templates (Llama 3.1, Qwen2.5, Mistral v0.3) and a set of small
Jinja feature templates through transformers' apply_chat_template, and
probes the Unicode classes and NFC of the regex and normaliser engines
tokenizers was built with.

Every section is independent: a failure is logged with its traceback,
recorded in meta.json, and the script goes on. Results are written as they
are made.
"""
import argparse
import hashlib
import json
import os
import random
import sys
import time
import traceback
import unicodedata
import zlib

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


META = {"errors": [], "sections": {}}


def section(name):
    """Runs fn, logs and records failures, never raises."""
    def wrap(fn):
        def run(*a, **kw):
            log(f"== {name}")
            t = time.time()
            try:
                r = fn(*a, **kw)
                META["sections"][name] = {"ok": True, "seconds": round(time.time() - t, 2)}
                return r
            except Exception as e:  # noqa: BLE001 - keep going, record it
                tb = traceback.format_exc()
                log(f"!! {name} failed: {e!r}\n{tb}")
                META["errors"].append({"section": name, "error": repr(e), "traceback": tb})
                META["sections"][name] = {"ok": False}
                return None
        return run
    return wrap


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))


# --- Regexes and templates of the real families ----------------------------

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# --- Text ------------------------------------------------------------------

def essay_text(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["text"]


UNICODE_POOL = (
    "你好世界中文日本語のテキスト한국어텍스트"  # CJK
    "مرحبا بالعالم שלום עולם"  # RTL
    "Ελληνικά Русский текст Українська ქართული Հայերեն"
    "हिन्दी বাংলা தமிழ் ไทย ລາວ ᠮᠣᠩᠭᠣᠯ"
    "😀👍🏽❤️🇺🇸👨‍👩‍👧‍👦🏳️‍🌈✨🎉"
    "é e\u0301 A\u030a \u212b \u2126 ñ n\u0303 ḍ̇ q\u0307\u0323 \u1112\u1161\u11ab"
    "①②③ ½ ² Ⅻ ٣٤٥ १२३ ０１２"
    "\u00a0\u2003\u3000\u200b\u200d\ufeff\u2028\u0085"
    "“smart” ‘quotes’ «guillemets» — – … • ©®™ ¿¡"
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠀀𠀁 \ue000 \U0010fffd"
)

FRAGMENTS = [
    "the", " the", "The", " of", " and", " a", "'s", "'S", "'re", "'ll", "'VE", "'d", "'m", "'t",
    " don't", " I'M", " can't", "ſ", "'ſ", " 123", "4567", "3.14", "1,000", " ", "  ", "   ", "\n",
    "\n\n", "\r\n", "\t", " \t", "!", "?!", "...", "(", ")", "[x]", "{y}", "<z>", "#", "$", "%", "&",
    "*", "+", "-", "=", "/", "\\", "|", "~", "`", "^", "_", "@", ":", ";", ",", ".", "\"", "'",
]


def build_strings(rng, essays):
    s = [
        "", " ", "  ", "a", "\n", "\n\n", "\r\n", "\r", "\t", " \t\n", "Hello world", " Hello world",
        "Hello  world", "Hello world ", "hello\n\nworld", "hello \n world", "hello   \n\n   world",
        "I'm", "you're", "He'll", "She'd", "We've", "I'M", "YOU'RE", "HE'LL", "it'S", "It'S", "'s", "'",
        "''", "don't", "DON'T", "Don'T", "'ſ", "'ſt", "x'ſ", "'K", "'\u212a", "rock'n'roll", "o'clock",
        "1", "12", "123", "1234", "12345", "123456789012345678901234567890", "3.14159", "1,000,000",
        "-42", "+7", "0x1F", "1e10", "٣٤٥", "१२३", "Ⅻ", "½", "²³", "①②", "０１２３",
        "你好，世界！", "日本語のテキストです。", "한국어 텍스트", "中文混合English文本123", "漢字かなカナ",
        "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇺🇸🇩🇪", "❤️", "🏳️‍🌈", "I ❤️ NY 😀😀😀",
        "e\u0301", "é", "A\u030a", "\u212b", "\u2126", "ﬁ", "ḍ̇", "d\u0307\u0323", "q\u0307\u0323",
        "\u1112\u1161\u11ab", "\u0928\u093c", "a\u0328\u0301", "\u0f73", "\u0344", "\u1e9b\u0323",
        "مرحبا بالعالم", "שלום עולם", "abc אבג 123", "\u202eevil\u202c",
        "a\u200bb", "\ufeffBOM", "\u00a0nbsp", "x\u3000y", "line\u2028sep", "nel\u0085x", "a\u180eb",
        "\x00", "\x01\x02\x03", "\x7f", "\x1b[31mred\x1b[0m", "tab\tsep\tvalues",
        "a" + " " * 50 + "b", "\n" * 20, " \t \n \r\n  x", "x   \n   y", "x \n", "   ", "  \n  ",
        "9" * 100, "12 345 6789", "!!!???...", "...", "—–-", "«quoted»", "“smart quotes”",
        "<html><body>Hi</body></html>", "def f(x):\n    return x**2\n",
        '{"a": [1, 2, {"b": null}]}', "https://example.com/path?q=1&r=2", "user@example.com",
        "Ã(", "ï¿½", "\ufffd", "\ufffd\ufffd", "\ue000\uf8ff", "\uffff", "\U0010ffff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "𠀀𠀁𪛖", "\U0001e290", "\U00011f00", "\U00031350", "\U0002ebf0", "\U0001fae8", "\u0870",
        "ΑΒΓ αβγ", "Ǆǅǆ", "ÀÉÎÕÜ àéîõü", "ß ẞ", "İstanbul ıi", "Ω Å K",
    ]
    # Runs of every kind of whitespace and of digits.
    for ws in [" ", "\t", "\n", "\r\n", "\u3000", "\u00a0"]:
        for n in (2, 3, 7):
            s.append("x" + ws * n + "y")
            s.append(ws * n + "z")
    # Random mixtures.
    pool = list(UNICODE_POOL)
    for _ in range(160):
        parts = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.45:
                parts.append(rng.choice(FRAGMENTS))
            elif r < 0.8:
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 5))))
            else:
                parts.append(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                                              rng.randint(0x3000, 0xd7ff), rng.randint(0xe000, 0xfffd),
                                              rng.randint(0x10000, 0x10ffff)])))
        s.append("".join(parts))
    # Sentences from the essays.
    words = essays.split(" ")
    for _ in range(60):
        i = rng.randrange(0, len(words) - 40)
        s.append(" ".join(words[i:i + rng.randint(3, 40)]))
    return s


SPECIAL_SLOTS = [
    "Hello{A}world", "{A}", "{A}{A}", " {A} ", "x {A}\ny", "{A}{B}", "start{B}", "{B} end",
    "nested {A}{C}{A}", "{C}", " {C}", "{C} ", "a{C}b", "partial {P}", "{P}{A}",
]


def special_strings(specials, partial):
    out = []
    a = specials[0]
    b = specials[1 % len(specials)]
    c = specials[2 % len(specials)]
    for t in SPECIAL_SLOTS:
        out.append(t.replace("{A}", a).replace("{B}", b).replace("{C}", c).replace("{P}", partial))
    return out


# --- Building tokenizers ------------------------------------------------------

def added(i, content, special=True, lstrip=False, rstrip=False, normalized=False, single_word=False):
    return {"id": i, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def train_byte_level(corpus, vocab_size, split_pattern, use_regex_bytelevel):
    """Trains byte-level BPE; returns (vocab dict, merges list of [a, b])."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    if split_pattern is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex_bytelevel)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    j = json.loads(tok.to_str())
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in j["model"]["merges"]]
    return j["model"]["vocab"], merges


def bpe_model(vocab, merges, legacy_merges=False, ignore_merges=False, byte_fallback=False,
              unk=None, fuse_unk=False):
    return {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": fuse_unk, "byte_fallback": byte_fallback,
            "ignore_merges": ignore_merges, "vocab": vocab,
            "merges": [" ".join(m) for m in merges] if legacy_merges else [list(m) for m in merges]}


def bytelevel(add_prefix_space=False, trim_offsets=True, use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


def tokenizer_json(model, added_tokens, normalizer, pre_tokenizer, post_processor, decoder):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
            "decoder": decoder, "model": model}


def template_processing(bos, bos_id, eos=None, eos_id=None):
    single = [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    pair = single + [{"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]
    special = {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}
    if eos is not None:
        single = single + [{"SpecialToken": {"id": eos, "type_id": 0}}]
        special[eos] = {"id": eos, "ids": [eos_id], "tokens": [eos]}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}


def make_llama3(corpus, templates, legacy_merges=False, ignore_merges=True):
    vocab, merges = train_byte_level(corpus, 2300, LLAMA3_PATTERN, False)
    n = len(vocab)
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    toks = [added(n + i, c) for i, c in enumerate(names)]
    j = tokenizer_json(
        bpe_model(vocab, merges, legacy_merges=legacy_merges, ignore_merges=ignore_merges), toks, None,
        {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            bytelevel(False, True, False)]},
        {"type": "Sequence", "processors": [bytelevel(True, False, True),
                                             template_processing("<|begin_of_text|>", n)]},
        bytelevel(True, True, True))
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
           "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
           "tokenizer_class": "PreTrainedTokenizerFast",
           "chat_template": templates.get("llama-3.1-8b-instruct.jinja")}
    return j, cfg, names


def make_qwen2(corpus, templates):
    vocab, merges = train_byte_level(corpus, 2200, QWEN2_PATTERN, False)
    n = len(vocab)
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|box_end|>"]
    toks = [added(n + i, c) for i, c in enumerate(names)]
    plain = ["<tool_call>", "</tool_call>", "<|fim_prefix|>"]
    toks += [added(n + len(names) + i, c, special=(c == "<|fim_prefix|>")) for i, c in enumerate(plain)]
    j = tokenizer_json(
        bpe_model(vocab, merges), toks, {"type": "NFC"},
        {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            bytelevel(False, False, False)]},
        bytelevel(False, False, False), bytelevel(False, False, False))
    cfg = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "split_special_tokens": False,
           "clean_up_tokenization_spaces": False, "model_max_length": 131072,
           "tokenizer_class": "Qwen2Tokenizer", "chat_template": templates.get("qwen2.5-7b-instruct.jinja")}
    return j, cfg, names + ["<tool_call>"]


def make_gpt2(corpus, templates):
    vocab, merges = train_byte_level(corpus, 1800, None, True)
    n = len(vocab)
    vocab = dict(vocab)
    vocab["<|endoftext|>"] = n  # GPT-2 keeps it in the model vocab too
    toks = [added(n, "<|endoftext|>")]
    j = tokenizer_json(bpe_model(vocab, merges), toks, None, bytelevel(False, True, True),
                       bytelevel(False, True, True), bytelevel(False, True, True))
    cfg = {"add_prefix_space": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
           "unk_token": "<|endoftext|>", "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}
    return j, cfg, ["<|endoftext|>"]


def make_roberta(corpus, templates):
    vocab, merges = train_byte_level(corpus, 1500, None, True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    v = {c: i for i, c in enumerate(specials)}
    for tokn, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        v[tokn] = i + len(specials)
    v["<mask>"] = len(v)
    toks = [added(i, c) for i, c in enumerate(specials)]
    toks.append(added(v["<mask>"], "<mask>", lstrip=True))
    j = tokenizer_json(bpe_model(v, merges), toks, None, bytelevel(True, True, True),
                       {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                        "trim_offsets": True, "add_prefix_space": True}, bytelevel(True, True, True))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
           "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>", "add_prefix_space": True,
           "tokenizer_class": "RobertaTokenizer", "model_max_length": 512}
    return j, cfg, ["<s>", "</s>", "<mask>"]


def train_sentencepiece(corpus, workdir, vocab_size, control):
    import sentencepiece as spm
    path = os.path.join(workdir, "sp_corpus.txt")
    with open(path, "w", encoding="utf-8") as f:
        for line in corpus:
            f.write(line.replace("\n", " ") + "\n")
    prefix = os.path.join(workdir, "sp")
    last = None
    for v in (vocab_size, vocab_size * 2, vocab_size * 4):
        try:
            spm.SentencePieceTrainer.train(
                input=path, model_prefix=prefix, vocab_size=v, model_type="bpe", byte_fallback=True,
                character_coverage=0.9995, split_digits=True, allow_whitespace_only_pieces=True,
                normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=control, num_threads=8,
                max_sentence_length=100000, minloglevel=2)
            break
        except Exception as e:  # noqa: BLE001 - retry with a bigger vocabulary
            last = e
            log(f"sentencepiece vocab {v} failed: {e!r}")
    else:
        raise last
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    pieces = []
    for i in range(sp.get_piece_size()):
        pieces.append((sp.id_to_piece(i), sp.get_score(i), sp.is_control(i), sp.is_unknown(i), sp.is_byte(i)))
    return pieces, prefix + ".model"


def sp_merges(vocab, scores):
    """Merges from a SentencePiece BPE vocabulary, ordered by the merged piece's score."""
    out = []
    for piece, score in scores.items():
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        out.extend(local)
    out.sort(key=lambda x: (x[2], len(x[0]), len(x[1])), reverse=True)
    return [[a, b] for a, b, _ in out]


SP_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def make_sentencepiece(corpus, workdir, templates, style):
    control = ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
               "[TOOL_RESULTS]", "[/TOOL_RESULTS]"] if style != "llama2" else []
    pieces, model_path = train_sentencepiece(corpus, workdir, 900, control)
    vocab = {p: i for i, (p, *_rest) in enumerate(pieces)}
    scores = {p: (0.0 if (c or u) else s) for p, s, c, u, b in pieces}
    merges = sp_merges(vocab, scores)
    toks = [added(i, p, special=True, normalized=False) for i, (p, s, c, u, b) in enumerate(pieces) if c or u]
    model = bpe_model(vocab, merges, byte_fallback=True, unk="<unk>", fuse_unk=True)
    post = template_processing("<s>", 1)
    if style == "llama2":
        j = tokenizer_json(model, toks, {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            None, post, SP_DECODER)
        cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "pad_token": None, "legacy": True, "clean_up_tokenization_spaces": False,
               "tokenizer_class": "LlamaTokenizer", "sp_model_kwargs": {}, "model_max_length": 4096}
    elif style == "mistral":
        j = tokenizer_json(model, toks, None, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                                                "split": False}, post, SP_DECODER)
        cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "legacy": False, "clean_up_tokenization_spaces": False,
               "tokenizer_class": "LlamaTokenizer", "model_max_length": 32768,
               "chat_template": templates.get("mistral-7b-instruct-v0.3.jinja")}
    else:  # Metaspace(always, split) with its own decoder: older conversions
        j = tokenizer_json(model, toks, None, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                                                "split": True}, post,
                           {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True})
        cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "tokenizer_class": "PreTrainedTokenizerFast"}
    return j, cfg, ["<s>", "</s>"] + control[:2], model_path


# --- Vectors -------------------------------------------------------------------

def fnv1a64(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for k in range(4):
            h ^= (i >> (8 * k)) & 0xff
            h = (h * 0x100000001b3) & 0xffffffffffffffff
    return f"{h:016x}"


def long_document(frags, n):
    """The same generator as text/fixtures_test.cc: a 64-bit LCG choosing fragments."""
    x = 0x2545F4914F6CDD1D
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xffffffffffffffff
        out.append(frags[(x >> 33) % len(frags)])
    return "".join(out)


def vectors_for(name, folder, tj, cfg, strings, specials, rng, long_frags):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(json.dumps(tj, ensure_ascii=False))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
    cfg = {k: v for k, v in cfg.items() if v is not None or k in ("bos_token", "pad_token", "unk_token")}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    hf = None
    try:
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(folder)
        log(f"{name}: transformers class {type(hf).__name__}")
    except Exception as e:  # noqa: BLE001
        log(f"{name}: AutoTokenizer failed: {e!r}")
        META["errors"].append({"section": name + ":autotokenizer", "error": repr(e)})
    cases = []
    all_strings = strings + special_strings(specials, specials[0][:-2])
    for s in all_strings:
        c = {"text": s}
        e1 = tok.encode(s, add_special_tokens=True)
        e0 = tok.encode(s, add_special_tokens=False)
        c["ids"] = e1.ids
        c["ids_no_special"] = e0.ids
        c["decode"] = tok.decode(e1.ids, skip_special_tokens=False)
        c["decode_skip"] = tok.decode(e1.ids, skip_special_tokens=True)
        if tok.normalizer is not None:
            c["normalized"] = tok.normalizer.normalize_str(s)
        if tok.pre_tokenizer is not None:
            c["pretokens"] = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(s)]
        if hf is not None:
            try:
                hid = hf(s, add_special_tokens=True)["input_ids"]
                if hid != e1.ids:
                    c["hf_ids"] = hid
                hd = hf.decode(e1.ids, skip_special_tokens=False)
                if hd != c["decode"]:
                    c["hf_decode"] = hd
            except Exception as e:  # noqa: BLE001
                c["hf_error"] = repr(e)
        cases.append(c)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    streams = []
    for k in range(40):
        ids = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 24))]
        if k % 4 == 0:  # byte-fallback and special-heavy streams
            ids = [rng.randrange(min(vocab_size, 300)) for _ in range(rng.randint(1, 24))]
        streams.append({"ids": ids, "decode": tok.decode(ids, skip_special_tokens=False),
                        "decode_skip": tok.decode(ids, skip_special_tokens=True)})
    doc = long_document(long_frags, 60000)
    t = time.time()
    ids = tok.encode(doc, add_special_tokens=False).ids
    long_doc = {"fragments": 60000, "chars": len(doc), "count": len(ids), "fnv1a64": fnv1a64(ids),
                "hf_seconds": round(time.time() - t, 3)}
    out = {"name": name, "vocab_size": vocab_size, "cases": cases, "streams": streams, "long_doc": long_doc}
    write_json(os.path.join(folder, "vectors.json"), out)
    log(f"{name}: {len(cases)} cases, vocab {vocab_size}, long doc {len(ids)} ids")
    return tok, hf


# --- Chat templates ---------------------------------------------------------------

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
    "multi_turn": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "And 3+3?"}],
    "system_multi_turn": [{"role": "system", "content": "  Be kind.\n"}, {"role": "user", "content": "Hey"},
                          {"role": "assistant", "content": " Hello! How can I help? "},
                          {"role": "user", "content": "Tell me a joke.\n\n"}],
    "assistant_last": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
    "unicode": [{"role": "user", "content": "你好 👋🏽 — «ça va?» e\u0301 \u2028 \t tab"}],
    "whitespace": [{"role": "user", "content": "\n\n  padded  \n\n"},
                   {"role": "assistant", "content": "\tanswer\t"}, {"role": "user", "content": " "}],
    "specials_in_content": [{"role": "user", "content": "<|eot_id|><|im_end|>[INST]</s> literal"}],
    "long_system": [{"role": "system", "content": "Rule 1.\nRule 2.\n" * 5},
                    {"role": "user", "content": "Follow the rules."}],
    "not_alternating": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "empty_content": [{"role": "user", "content": ""}],
}

TOOL_CONVERSATIONS = {
    "tools_user": ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL]),
    "tools_system_user": ([{"role": "system", "content": "Use tools."},
                           {"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL]),
    "tool_call_roundtrip": ([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "abc123XYZ", "type": "function",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "abc123XYZ", "name": "get_weather", "content": "{\"temp\": 21.5}"},
        {"role": "user", "content": "Thanks"}], [WEATHER_TOOL]),
}


def render_case(hf, template, messages, agp, tools=None, **kw):
    try:
        text = hf.apply_chat_template(messages, chat_template=template, tools=tools, tokenize=False,
                                      add_generation_prompt=agp, **kw)
        return {"text": text}
    except Exception as e:  # noqa: BLE001 - raise_exception and template errors are vectors too
        return {"error_type": type(e).__name__, "error": str(e)}


def chat_vectors(out_dir, family_hf, templates):
    results = []
    for family, tname in (("llama3", "llama-3.1-8b-instruct.jinja"), ("qwen2", "qwen2.5-7b-instruct.jinja"),
                          ("mistral", "mistral-7b-instruct-v0.3.jinja")):
        hf = family_hf.get(family)
        if hf is None or tname not in templates:
            log(f"chat: skip {family}")
            continue
        template = templates[tname]
        for cname, msgs in CONVERSATIONS.items():
            for agp in (True, False):
                r = render_case(hf, template, msgs, agp)
                r.update({"family": family, "template": tname, "conversation": cname, "add_generation_prompt": agp})
                if "text" in r:
                    r["ids"] = hf(r["text"], add_special_tokens=False)["input_ids"]
                results.append(r)
        for cname, (msgs, tools) in TOOL_CONVERSATIONS.items():
            r = render_case(hf, template, msgs, True, tools=tools)
            r.update({"family": family, "template": tname, "conversation": cname, "add_generation_prompt": True,
                      "tools": True})
            results.append(r)
        if family == "llama3":
            r = render_case(hf, template, CONVERSATIONS["system_user"], True, date_string="01 Jan 2030")
            r.update({"family": family, "template": tname, "conversation": "system_user", "add_generation_prompt": True,
                      "kwargs": {"date_string": "01 Jan 2030"}})
            results.append(r)
    write_json(os.path.join(out_dir, "chat_vectors.json"),
               {"conversations": CONVERSATIONS, "tool_conversations": {k: {"messages": m, "tools": t}
                                                                       for k, (m, t) in TOOL_CONVERSATIONS.items()},
                "cases": results})
    log(f"chat: {len(results)} renders")


# Small templates, each exercising a few Jinja features, rendered the way
# transformers renders chat templates (its sandboxed environment, trim_blocks,
# lstrip_blocks, loop controls, raise_exception, tojson).
JINJA_FEATURES = [
    "{{ messages[0].content }}|{{ messages[0]['role'] }}",
    "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }}/{{ loop.revindex }}/{{ loop.revindex0 }};{% endfor %}",
    "{% for m in messages %}{% if loop.previtem is defined %}{{ loop.previtem.role }}{% endif %}>{% if loop.nextitem is defined %}{{ loop.nextitem.role }}{% endif %} {% endfor %}",
    "{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }} {% else %}none{% endfor %}",
    "{% for x in [] %}x{% else %}empty{% endfor %}",
    "{% for k, v in {'a': 1, 'b': [2, 3]}.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for k, v in data | items %}{{ k }}:{{ v }},{% endfor %}",
    "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }} {{ ns.s }}",
    "{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{% endfor %}{{ x }}",
    "{% if messages | length > 2 %}many{% elif messages | length == 2 %}two{% else %}few{% endif %}",
    "{{ 'a' if false else 'b' }} {{ 'c' if true }}|{{ none }}|{{ true }}|{{ false }}|{{ 1.0 }}|{{ 2.5e3 }}|{{ 10 / 4 }}|{{ 10 // 4 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}",
    "{{ [1, 'two', none, true, 1.5, {'k': 'v'}] }}|{{ {'a': [1, {'b': none}]} }}|{{ ('x', 1) }}",
    "{{ 'He said \"hi\"' }}|{{ \"it's\" }}|{{ ['it\\'s', 'a\"b', 'c\\nd'] }}",
    "{{ messages | tojson }}",
    "{{ data | tojson(indent=2) }}|{{ data | tojson(indent=4) }}",
    "{{ {'unicode': 'é 你好 😀', 'ctrl': '\\u0001\\t', 'num': [1, 1.5, -0.0, 1e100], 'nested': {'t': true, 'n': none}} | tojson }}",
    "{{ '  padded  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'Hello' | upper }}|{{ 'Hello' | lower }}|{{ 'hello world' | title }}|{{ 'hello World' | capitalize }}",
    "{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a-b-c'.split('-', 1) }}|{{ '  x '.strip() }}|{{ 'xxyxx'.strip('x') }}|{{ '  x '.lstrip() }}|{{ '  x '.rstrip() }}",
    "{{ 'hello'.startswith('he') }}|{{ 'hello'.endswith('lo') }}|{{ 'hello'.startswith(('x', 'h')) }}|{{ 'a.b.c'.replace('.', '/') }}|{{ 'hello'.find('l') }}|{{ 'hello'.count('l') }}|{{ 'Hello'.upper() }}|{{ 'Hello'.lower() }}|{{ 'hi there'.title() }}",
    "{{ 'hello'[1:3] }}|{{ 'hello'[::-1] }}|{{ 'hello'[-2:] }}|{{ [1,2,3,4,5][1::2] }}|{{ [1,2,3][:-1] }}|{{ 'héllo😀x'[1:5] }}|{{ 'abc'[-1] }}",
    "{{ messages | length }}|{{ 'héllo😀' | length }}|{{ data | length }}|{{ [3,1,2] | sort }}|{{ [3,1,2] | sort(reverse=true) }}|{{ ['b','A','c'] | sort }}|{{ [1,2,3] | sum }}|{{ [1,5,3] | max }}|{{ [4,2,8] | min }}",
    "{{ messages | map(attribute='role') | join(', ') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='content') | list }}",
    "{{ [1,2,3,4] | select('even') | list }}|{{ [1,2,3,4] | reject('odd') | list }}|{{ ['a','b'] | map('upper') | list }}|{{ [1,1,2,3,3] | unique | list }}|{{ [1,2,3] | reverse | list }}|{{ [1,2,3] | first }}|{{ [1,2,3] | last }}",
    "{{ undefined_var | default('dflt') }}|{{ '' | default('empty', true) }}|{{ none | default('n') }}|{{ undefined_var is defined }}|{{ undefined_var is undefined }}|{{ none is none }}|{{ 'x' is string }}|{{ 1 is number }}|{{ 1.5 is float }}|{{ 1 is integer }}|{{ true is boolean }}|{{ data is mapping }}|{{ [1] is iterable }}|{{ 'x' is iterable }}|{{ [1] is sequence }}",
    "{{ 3 is odd }}|{{ 4 is even }}|{{ 9 is divisibleby 3 }}|{{ 'a' is in ['a'] }}|{{ 'user' is equalto 'user' }}|{{ 'ABC' is upper }}|{{ 'abc' is lower }}|{{ 2 is gt 1 }}|{{ 2 is ge 3 }}|{{ true is true }}|{{ 0 is false }}",
    "{{ 'ab' in 'xaby' }}|{{ 'role' in messages[0] }}|{{ 2 in [1,2] }}|{{ 3 not in [1,2] }}|{{ not true }}|{{ true and false }}|{{ true or false }}|{{ 1 < 2 < 3 }}|{{ 1 == 1.0 }}|{{ 'a' != 'b' }}|{{ [1,2] == [1,2] }}|{{ {'a':1} == {'a':1} }}",
    "{{ 'a' ~ 1 ~ none ~ true }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ 'ab' * 3 }}|{{ 7 - 2 * 3 }}|{{ (7 - 2) * 3 }}|{{ -3 | abs }}|{{ 3.7 | int }}|{{ '42' | int + 1 }}|{{ 'x' | int }}|{{ '2.5' | float }}|{{ 3 | float }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ 7 | string ~ '!' }}",
    "{% if true %}\n  yes\n{% endif %}\n  {% for i in [1, 2] %}\n    item {{ i }}\n  {% endfor %}\nend",
    "a  {%- if true -%}  b  {%- endif -%}  c\n{{- ' d ' -}}\n e {# comment #}\n  {#- c2 -#}  f",
    "{% raw %}{{ not rendered }}{% endraw %}|{% set y %}captured {{ 1 + 1 }}{% endset %}{{ y }}",
    "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}|{{ range(2, 8, 2) | list }}",
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', punct='?') }}",
    "{{ raise_exception('custom failure: ' ~ messages | length) }}",
    "{{ messages[5].content }}",
    "{{ undefined_var.attr }}",
    "{% for m in messages %}{{ m.content | trim }}{% if not loop.last %}\n{% endif %}{% endfor %}{{ eos_token }}{{ bos_token }}",
    "{{ data.items() | list }}|{{ data.keys() | list }}|{{ data.values() | list }}|{{ data.get('missing', 'fallback') }}|{{ data.get('a') }}|{{ data['b']['c'] }}|{{ data.b.c }}",
    "{{ data | dictsort }}|{{ data | list }}|{{ data | first }}|{{ [[1,2],[3]] | map('length') | list }}|{{ messages | map(attribute='missing', default='d') | list }}",
    "{{ '%s and %d' | format('x', 3) }}|{{ 'text' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'one two three' | wordcount }}|{{ 'Hello' | replace('l', 'L', 1) }}",
    "{{ 5 > 3 and 'yes' or 'no' }}|{{ [] or 'empty' }}|{{ none or 0 or '' or 'last' }}|{{ (messages | length) if messages else 0 }}",
    "{%- for m in messages -%}\n{%- if m.role == 'user' -%}\n  [{{ m.content }}]\n{%- else -%}\n  ({{ m.content }})\n{%- endif -%}\n{%- endfor -%}",
    "{{ 1 == true }}|{{ true + 1 }}|{{ 3 / 2 }}|{{ 4 / 2 }}|{{ 1e3 }}|{{ 1.5e-7 }}|{{ 123456789.0 }}|{{ 1e16 }}|{{ 0.1 + 0.2 }}|{{ -0.0 }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% set t = (1, 2) %}{{ t[0] }}|{{ [1, [2, [3]]] | tojson }}|{{ 'x' | list }}",
    "{{ strftime_now('%Y') | length }}",
    "{% set d = {'z': 1, 'a': 2} %}{{ d | tojson }}|{{ d | dictsort | list }}|{{ d.z }}",
    "{% for m in messages %}{{ m.role | upper }}{{ ': ' if m.content else ':' }}{{ m.content[:5] }}{% endfor %}",
    "{{ messages[0] }}|{{ messages[-1].role }}|{{ messages | selectattr('tool_calls', 'undefined') | list | length }}|{{ messages | selectattr('content') | list | length }}",
]

FEATURE_DATA = {"a": 1, "b": {"c": [1, "two", None]}, "z": "zed", "f": 1.5, "t": True}


def jinja_feature_vectors(out_dir, hf):
    msgs = CONVERSATIONS["system_multi_turn"]
    results = []
    for i, t in enumerate(JINJA_FEATURES):
        r = render_case(hf, t, msgs, False, data=FEATURE_DATA)
        r["template"] = t
        results.append(r)
    write_json(os.path.join(out_dir, "jinja_vectors.json"),
               {"messages": msgs, "data": FEATURE_DATA, "cases": results})
    log(f"jinja: {len(results)} feature renders, {sum('error' in r for r in results)} errors")


# More Jinja feature templates, rendered where jinja2 3.1.6 is installed (the
# version transformers used on the GPU machine) in an environment configured
# as transformers 5.17 configures its own: `--jinja-local OUT_FILE`.
JINJA_EXTRA = [
    "{%- for a in [1, 2] -%}{%- for b in 'xy' -%}{{ loop.index }}{{ a }}{{ b }}{{ loop.first }},{%- endfor -%}|{{ loop.last }};{%- endfor %}",
    "{% set outer = 'o' %}{% for i in [1] %}{% set outer = 'inner' %}{{ outer }}{% endfor %}{{ outer }}",
    "{% if true %}{% set leaked = 'yes' %}{% endif %}{{ leaked }}",
    "{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{{ [3, 1, 2] | sort | join(',') }}|{{ messages | sort(attribute='role') | map(attribute='role') | join(',') }}",
    "{{ messages | map(attribute='content') | map('trim') | map('upper') | join('/') }}",
    "{{ ['a-b', 'c-d'] | map('replace', '-', '+') | list }}",
    "{{ messages | selectattr('content', 'string') | list | length }}|{{ messages | rejectattr('role', 'in', ['user', 'system']) | list | length }}",
    "{{ data | dictsort(by='value', reverse=true) if false else data | dictsort(reverse=true) }}",
    "{{ {'b': 2, 'a': 1, 'C': 3} | dictsort }}|{{ {'b': 2, 'a': 1, 'C': 3} | dictsort(true) }}",
    "{{ 'line1\nline2\n\nline4' | indent(3, true) }}|{{ 'x\ny' | indent('> ') }}|{{ 'a\n\nb' | indent(2, blank=true) }}",
    "{{ 2.5 | round(0, 'floor') }}|{{ 2.1 | round(0, 'ceil') }}|{{ 3.14159 | round(3) }}|{{ -2.5 | round }}|{{ 0.125 | round(2) }}|{{ 1 | round }}",
    "{{ '12abc' | int }}|{{ '  7 ' | int }}|{{ '3.9' | int }}|{{ 'x' | int(-1) }}|{{ '1e3' | float }}|{{ 'nan?' | float(0.5) }}|{{ true | int }}",
    "{{ [{'n': 1}, {'n': 2}] | sum(attribute='n') }}|{{ [1.5, 2] | sum }}|{{ [[1], [2]] | sum(start=[]) }}",
    "{{ ['b', 'A', 'a', 'B'] | unique | list }}|{{ ['b', 'A', 'a', 'B'] | unique(case_sensitive=true) | list }}|{{ ['x', 'Y'] | max }}|{{ ['x', 'Y'] | min }}",
    "{{ messages | max(attribute='content') }}",
    "{{ \"it's-a (test) o'neil [x]<y>\" | title }}|{{ 'hELLO wORLD' | capitalize }}|{{ 'ǆungla ǉ' | title }}|{{ 'straße' | upper }}",
    "{{ 'a,b,,c'.split(',', 2) }}|{{ 'a b  c '.rsplit(None, 1) }}|{{ 'k=v=w'.rsplit('=', 1) }}|{{ '  x y '.split(None, 1) }}|{{ ''.split() }}|{{ ''.split(',') }}",
    "{{ '<<x>>'.strip('<>') }}|{{ 'abcba'.lstrip('ab') }}|{{ 'abcba'.rstrip('ab') }}|{{ '\u00a0x\u2003'.strip() }}|{{ 'x\u200by'.split() }}",
    "{{ 'Hello'.find('l') }}|{{ 'Hello'.rfind('l') }}|{{ 'Hello'.find('z') }}|{{ 'aaa'.count('aa') }}|{{ 'a-b'.join(['1', '2']) }}|{{ ', '.join('abc') }}",
    "{{ 'abc'.replace('', '-') }}|{{ 'aaaa'.replace('a', 'b', 2) }}|{{ 'x'.upper() ~ 'Y'.lower() }}|{{ 'one two'.title() }}|{{ \"o'neil mcdonald\".title() }}",
    "{{ '123'.isdigit() }}|{{ '12a'.isdigit() }}|{{ 'abc'.isalpha() }}|{{ ' \t'.isspace() }}|{{ 'ABC'.isupper() }}|{{ 'abc'.islower() }}|{{ ''.isalpha() }}",
    "{{ 'a\nb\r\nc'.splitlines() }}|{{ 'prefix-x'.removeprefix('prefix-') }}|{{ 'x.txt'.removesuffix('.txt') }}",
    "{{ 'hello'[10:] }}|{{ 'hello'[-100:2] }}|{{ [1, 2, 3][::-2] }}|{{ [1, 2, 3][5::-1] }}|{{ (1, 2, 3)[1:] }}|{{ 'abc'[1::-1] }}",
    "{{ [1, 2, 3][-1] }}|{{ [1, 2, 3][3] is defined }}|{{ 'abc'[5] is undefined }}|{{ {'a': 1}['b'] is defined }}|{{ data.missing is defined }}",
    "{{ 1 < 2 }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ (1, 2) == (1, 2) }}|{{ [1, 2] == (1, 2) }}|{{ none == none }}|{{ 1 == '1' }}|{{ true == 1.0 }}",
    "{{ 'a' in {'a': 1} }}|{{ 1 in {'a': 1} }}|{{ 'x' in 'xyz' }}|{{ '' in 'abc' }}|{{ none in [none] }}|{{ [1] in [[1], [2]] }}",
    "{{ {'a': 1, 'a': 2} }}|{{ {1: 'x', 'y': none} }}|{{ {'k': (1, 2)} }}|{{ {} }}|{{ [] }}|{{ () }}|{{ (1,) }}",
    "{{ 'quote\"s' }}|{{ [\"a'b\", 'c\"d', 'both\\'\"', '\\\\', '\\t', '\\x07', '\\u2028', '\\U0001F600'] }}",
    "{{ [1e22, 1e-5, 0.0001, 123.456, 1.0e16, 9999999999999998.0, -1e-300, 2.5e-10, 100.0, 3.0] }}",
    "{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % -3 }}|{{ -7.5 // 2 }}|{{ 7.5 % 2 }}|{{ 2 ** -1 }}|{{ 2 ** 0.5 }}|{{ 10 / 3 }}|{{ 1 + 2.0 }}|{{ 3 * 'ab' }}|{{ [0] * 3 }}",
    "{{ -(3) }}|{{ +2 }}|{{ - -1 }}|{{ not not 0 }}|{{ 1 if 0 else 2 if 0 else 3 }}|{{ ('yes' if true) ~ '!' }}",
    "{{ 'x' if messages else 'y' }}|{{ messages and messages[0].role }}|{{ (none or []) | length }}|{{ 0 or none }}",
    "{{ data.b.c[1] }}|{{ data['b']['c'][2] }}|{{ data.b.c.1 }}|{{ data.get('z') }}|{{ data.items() | first }}|{{ data.keys() | last }}",
    "{% set ns = namespace(items=[], total=0) %}{% for m in messages %}{% set ns.items = ns.items + [m.role] %}{% set ns.total = ns.total + m.content | length %}{% endfor %}{{ ns.items }} {{ ns.total }}",
    "{% set ns = namespace() %}{% set ns.x = 1 %}{{ ns.x }}|{{ ns.y is defined }}",
    "{% macro row(a, b='B', c=none) %}[{{ a }}|{{ b }}|{{ c }}]{% endmacro %}{{ row(1) }}{{ row(1, 2) }}{{ row(1, c=3) }}{{ row(a='x') }}",
    "{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(4) }}",
    "{% set x %}\n  block {{ 1 }}\n{% endset %}[{{ x }}]",
    "  {%- if true %}\n    a\n  {%- endif %}\n  b\n{% if true -%}\n    c\n{%- endif %}",
    "{% for m in messages %}\n  {{- m.role }}\n{% endfor %}",
    "x  {#- comment -#}  y\n{# c2 #}\nz\n  {# indented comment #}\nw",
    "{% raw %}  {%- raw stays -%}  {% endraw %}|{%- raw -%}  {{ x }}  {%- endraw -%}|",
    "a{%+ if true %}b{% endif +%}\nc",
    "\n\n{{ 'lead' }}\n\n",
    "{% for i in range(10) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 6 %}{% break %}{% endif %}{{ i }}{% else %}never{% endfor %}",
    "{% for k in data %}{{ k }}{% endfor %}|{% for c in 'héllo' %}{{ c }}.{% endfor %}|{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}",
    "{% for x in none %}{% endfor %}",
    "{{ messages | tojson(indent=2, sort_keys=true) }}",
    "{{ data | tojson(separators=(',', ':')) }}|{{ 'ünï' | tojson }}|{{ 'ünï' | tojson(ensure_ascii=true) }}|{{ '😀' | tojson(true) }}|{{ none | tojson }}|{{ (1, 'a') | tojson }}",
    "{{ [] | tojson(indent=2) }}|{{ {} | tojson(indent=2) }}|{{ [[]] | tojson(indent=1) }}|{{ 1.5 | tojson }}|{{ 10 | tojson }}|{{ true | tojson }}",
    "{{ undefined_thing | tojson }}",
    "{{ 'a' + 1 }}",
    "{{ nothing() }}",
    "{{ 1 / 0 }}",
    "{% for x in 5 %}{% endfor %}",
    "{{ messages[0].role.upper() }}|{{ messages[0]['content'].strip().split()[0] }}|{{ messages | length > 3 }}",
    "{{ messages | first | attr('items') is callable }}|{{ 'x' is callable }}|{{ range is callable }}|{{ 3 is sameas 3 }}|{{ none is sameas none }}|{{ messages is sameas messages }}",
    "{{ 'AbC' is lower }}|{{ 'abc' is lower }}|{{ '' is upper }}|{{ 4 is divisibleby(2) }}|{{ 5 is ne(5) }}|{{ 2 is lt 3 }}|{{ 2 is le(2) }}|{{ 'upper' is filter }}|{{ 'odd' is test }}|{{ 'nope' is filter }}",
    "{{ data.t is true }}|{{ data.t is boolean }}|{{ 1 is boolean }}|{{ data.f is float }}|{{ data.a is integer }}|{{ true is integer }}|{{ data.z is sequence }}|{{ data is iterable }}|{{ 1 is iterable }}",
    "{{ '%s=%r' | format('k', 'v') }}|{{ '%d%%' | format(42.9) }}|{{ '%.2f' % 3.14159 if false else '%s-%s' % ('a', 'b') }}",
    "{{ 'x' ~ none ~ undefined_var ~ [1] ~ {'a': none} }}",
    "{{ messages | length is odd }}|{{ (messages | map(attribute='role') | list)[1:3] }}|{{ messages[1:] | map(attribute='role') | join }}",
    "{{ dict(a=1, b='two') }}|{{ dict({'x': 1}, y=2) }}|{{ namespace(a=1).a }}|{{ range(3) }}|{{ range(5, 0, -2) | list }}",
    "{{ raise_exception('stop: ' ~ (messages | length)) if messages | length > 10 else 'fine' }}",
    "{{ messages | selectattr('role', 'eq', 'user') | map(attribute='content') | map('length') | list }}|{{ [1, 2, 3, 4] | select('gt', 2) | list }}|{{ [1, 2, 3] | reject('eq', 2) | list }}",
    "{{ '  a  ' | trim('') }}|{{ 'xxaxx' | trim('x') }}|{{ none | trim }}|{{ 42 | trim }}|{{ [1, 2] | join }}|{{ [1, 2] | join(', ') }}|{{ [1, 2] | string }}",
    "{{ 'é' | length }}|{{ '👨‍👩‍👧' | length }}|{{ '👨‍👩‍👧'[0] }}|{{ '👨‍👩‍👧' | list | length }}|{{ 'abc' | reverse }}|{{ 'a b c' | wordcount }}|{{ 'Ab' | lower | upper }}",
    "{{ messages[-1].content[-5:] | trim }}|{{ messages | last | attr('role') }}|{{ (messages | first).role }}|{{ messages.0.role }}",
]


def jinja_local_vectors(out_file):
    import datetime
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class AssistantTracker(Extension):  # transformers' {% generation %} tag, rendering its body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: datetime.datetime.now().strftime(f)
    msgs = CONVERSATIONS["system_multi_turn"]
    results = []
    for t in JINJA_EXTRA:
        r = {"template": t}
        try:
            r["text"] = env.from_string(t).render(messages=msgs, tools=None, documents=None, data=FEATURE_DATA,
                                                  add_generation_prompt=False, bos_token="<|begin_of_text|>",
                                                  eos_token="<|eot_id|>")
        except Exception as e:  # noqa: BLE001 - errors are vectors too
            r["error_type"], r["error"] = type(e).__name__, str(e)
        results.append(r)
    write_json(out_file, {"jinja2": jinja2.__version__, "messages": msgs, "data": FEATURE_DATA, "cases": results})
    print(f"{len(results)} templates, {sum('error' in r for r in results)} errors")


# --- Unicode probes ------------------------------------------------------------------

def ranges_of(cps):
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def unicode_probes(out_dir):
    from tokenizers import Regex, normalizers, pre_tokenizers
    allcp = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chr(c) for c in allcp)
    classes = {}
    for name, pattern in [("L", r"\p{L}"), ("N", r"\p{N}"), ("s", r"\s"), ("M", r"\p{M}"), ("P", r"\p{P}"),
                          ("S", r"\p{S}"), ("Z", r"\p{Z}"), ("C", r"\p{C}"), ("d", r"\d"), ("w", r"\w"),
                          ("Lu", r"\p{Lu}"), ("Nd", r"\p{Nd}"), ("Cn", r"\p{Cn}")] + \
            [("i_" + ch, f"(?i:{ch})") for ch in "strevmldk"]:
        split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
        kept = set()
        for piece, _ in split.pre_tokenize_str(text):
            kept.update(ord(ch) for ch in piece)
        classes[name] = ranges_of(set(allcp) - kept)
        log(f"class {name}: {sum(b - a + 1 for a, b in classes[name])} code points")
    nfc = normalizers.NFC()
    probe = [c for c in allcp if c != 0x0A]
    outs = nfc.normalize_str("\n".join(chr(c) for c in probe)).split("\n")
    changed = {}
    if len(outs) == len(probe):
        changed = {str(c): o for c, o in zip(probe, outs) if o != chr(c)}
    else:
        META["errors"].append({"section": "nfc_single", "error": f"{len(outs)} != {len(probe)}"})
    decomposed = []
    for c in allcp:
        d = unicodedata.normalize("NFD", chr(c))
        if len(d) > 1:
            decomposed.append(d)
    rng = random.Random(7)
    marks = [chr(c) for c in (0x300, 0x301, 0x308, 0x323, 0x327, 0x328, 0x31b, 0x345, 0x5b0, 0x5c4, 0x94d,
                              0x93c, 0x302, 0x303, 0x30a, 0x1dce, 0x20d0, 0x3099, 0x309a)]
    bases = list("aeiouAEOUnNcCsSzZkKwy") + ["\u3046", "\u304b", "\u0915", "\u05d0", "\u1100", "\uac00", "\u0391"]
    for _ in range(400):
        decomposed.append(rng.choice(bases) + "".join(rng.choice(marks) for _ in range(rng.randint(1, 4))))
    decomposed += ["\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8", "\u1100\u1161\u0300\u11a8"]
    comp_out = nfc.normalize_str("\n".join(decomposed)).split("\n")
    write_json(os.path.join(out_dir, "unicode_probes.json"), {
        "python_unidata_version": unicodedata.unidata_version, "classes": classes,
        "nfc_single_changed": changed,
        "nfc_sequences": [[a, b] for a, b in zip(decomposed, comp_out)] if len(comp_out) == len(decomposed) else []})


# --- Trimming for the repository ------------------------------------------------

def trim_for_commit(src, dest):
    """Copies the generated folder to tests/fixtures/tokenizers/, smaller.

    Run where the output came back: `--trim SRC --out DEST`. Keeps every
    family's tokenizer files (compact JSON), trims the duplicate families'
    case lists and the Hangul syllables out of the NFC composition probe
    (a sample of them stays).
    """
    import shutil
    os.makedirs(dest, exist_ok=True)
    keep_cases = {"llama3_legacy_merges": 120, "sp_metaspace_always": 160}
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        if name in ("_work", "llama2_add_eos"):
            continue
        if os.path.isdir(p):
            os.makedirs(os.path.join(dest, name), exist_ok=True)
            for f in sorted(os.listdir(p)):
                with open(os.path.join(p, f), encoding="utf-8") as fh:
                    obj = json.load(fh)
                if f == "vectors.json" and name in keep_cases:
                    obj["cases"] = obj["cases"][:keep_cases[name]]
                write_json(os.path.join(dest, name, f), obj)
        elif name == "unicode_probes.json":
            with open(p, encoding="utf-8") as fh:
                obj = json.load(fh)
            seq = obj["nfc_sequences"]
            obj["nfc_sequences"] = [s for i, s in enumerate(seq)
                                    if not (0xAC00 <= ord(s[1][0]) <= 0xD7A3 and len(s[1]) == 1) or i % 97 == 0]
            write_json(os.path.join(dest, name), obj)
        else:
            shutil.copy(p, os.path.join(dest, name))


# --- Main ------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--essays")
    ap.add_argument("--templates")
    ap.add_argument("--trim", help="trim an output folder made earlier into --out, and stop")
    ap.add_argument("--jinja-local", action="store_true",
                    help="only render JINJA_EXTRA with the local jinja2 into the file --out, and stop")
    args = ap.parse_args()
    if args.jinja_local:
        jinja_local_vectors(args.out)
        return
    if args.trim:
        trim_for_commit(args.trim, args.out)
        return
    if not args.essays or not args.templates:
        ap.error("--essays and --templates are required")
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "_work")
    os.makedirs(work, exist_ok=True)

    versions = {"python": sys.version}
    for mod in ("tokenizers", "transformers", "sentencepiece", "jinja2"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            versions[mod] = f"unavailable: {e!r}"
    META["versions"] = versions
    log(f"versions: {versions}")
    write_json(os.path.join(args.out, "meta.json"), META)

    templates = {}
    for name in sorted(os.listdir(args.templates)):
        if name.endswith(".jinja"):
            with open(os.path.join(args.templates, name), encoding="utf-8") as f:
                templates[name] = f.read()
    essays = essay_text(args.essays)
    rng = random.Random(1234)
    # Training text: essays plus Unicode-heavy lines, so that merges exist for
    # the scripts the test strings use.
    lines = [essays[i:i + 2000] for i in range(0, min(len(essays), 1_200_000), 2000)]
    pool = UNICODE_POOL + "".join(FRAGMENTS)
    for _ in range(3000):
        lines.append("".join(rng.choice(pool) for _ in range(rng.randint(5, 60))))
    strings = build_strings(random.Random(99), essays)
    long_frags = sorted(set(essays[:200000].split(" ")))[:3000] + [" ", "\n", "  ", "\n\n"] + \
        [f + " " for f in UNICODE_POOL.split(" ")] + FRAGMENTS
    write_json(os.path.join(args.out, "strings.json"), {"strings": strings, "long_doc_fragments": long_frags})

    family_hf = {}

    def family(name, maker, *a, **kw):
        @section(name)
        def run():
            made = maker(*a, **kw)
            tj, cfg, specials = made[0], made[1], made[2]
            tok, hf = vectors_for(name, os.path.join(args.out, name), tj, cfg, strings, specials,
                                  random.Random(zlib.crc32(name.encode())), long_frags)
            if hf is not None:
                family_hf[name] = hf
            if name == "llama2" and hf is not None:
                # transformers rebuilds a Llama tokenizer's post-processor from
                # add_bos_token / add_eos_token: record that too.
                cfg2 = dict(cfg, add_eos_token=True)
                vectors_for("llama2_add_eos", os.path.join(args.out, "llama2_add_eos"), tj, cfg2, strings[:80],
                            specials, random.Random(5), long_frags[:100])
        run()

    family("llama3", make_llama3, lines, templates)
    family("llama3_legacy_merges", make_llama3, lines, templates, legacy_merges=True, ignore_merges=False)
    family("qwen2", make_qwen2, lines, templates)
    family("gpt2", make_gpt2, lines, templates)
    family("roberta", make_roberta, lines, templates)
    family("llama2", make_sentencepiece, lines, work, templates, "llama2")
    family("mistral", make_sentencepiece, lines, work, templates, "mistral")
    family("sp_metaspace_always", make_sentencepiece, lines, work, templates, "always")
    write_json(os.path.join(args.out, "meta.json"), META)

    section("chat")(chat_vectors)(args.out, family_hf, templates)
    if "llama3" in family_hf:
        section("jinja")(jinja_feature_vectors)(args.out, family_hf["llama3"])
    write_json(os.path.join(args.out, "meta.json"), META)
    section("unicode")(unicode_probes)(args.out)
    META["seconds"] = round(time.time() - T0, 1)
    write_json(os.path.join(args.out, "meta.json"), META)
    log(f"done, {len(META['errors'])} errors")


if __name__ == "__main__":
    main()
