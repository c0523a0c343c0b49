#!/usr/bin/env python3
"""Trains Seer's small long-context model: a Llama-architecture checkpoint
(head_dim 64, GQA, llama3-style RoPE, 8k context) with its own byte-level BPE
tokenizer, in a few minutes of one GPU, saved as a Hugging Face checkpoint
under 24 MB (docs/TRAINING.md).

The GPU machine reaches nothing outside it, so there are two steps:

  1. here, with the standard library only: gather the text.

       python3 tools/train_small_model.py prepare --install --out .carry/small_model_data

     --install first installs the Debian packages the text comes from
     (bible-kjv, bible-kjv-text, linux-doc, python3-doc; needs root and apt).
     The corpus: the King James Bible (dumped with `bible`), the kernel's
     documentation and Python's documentation (their reStructuredText
     sources, as the packages ship them) and Paul Graham's essays
     (shared/data/PaulGrahamEssays.json). Writes train.jsonl.gz (one JSON
     document per line), heldout.txt (text no training step sees: the last
     tenth of the essays and a sliver of each other source) and sources.json
     (packages, versions, files, sizes). About 10 MB compressed, so it
     travels with the working tree (.carry/ is git-ignored: name it in the
     run's carry).

  2. on the GPU machine (torch, tokenizers, transformers, safetensors):

       python3 tools/train_small_model.py train --data .carry/small_model_data --out OUT --minutes 6

     trains the tokenizer on the training text, then the model for --minutes
     of wall clock on natural text mixed with synthetic passkey documents
     (the format seer-quality-eval tests, bench/quality_eval.cc, and essay
     haystacks), and saves OUT/{config.json, generation_config.json,
     model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
     training.json, README.md}: the data, the steps and tokens, the
     held-out loss and a passkey check.

  python3 tools/train_small_model.py gate-text --data .carry/small_model_data --out DIR [--documents 1200]
     writes the first training documents as text files, the text the
     committed gates (models/seer-small-gates) were trained on with
     `seer-train --data DIR`.

  python3 tools/train_small_model.py passkey-example --fillers N --depth D --key K
     prints one passkey document (the same text seer-quality-eval
     --passkey-example prints; a test keeps the two in step).

Everything heavy is imported inside `train`, so `prepare` and the tests run
where there is no torch.
"""

import argparse
import gzip
import hashlib
import html.parser
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time

# --- the passkey documents ------------------------------------------------------
# The same text as bench/quality_eval.cc's (Mohtashami & Jaggi's landmark
# attention test, as LongLoRA and others use it): keep the two in step.
PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                 "I will quiz you about the important information there.")
PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_QUESTION = " What is the pass key? The pass key is"


def passkey_line(key: str) -> str:
    return f" The pass key is {key}. Remember it. {key} is the pass key."


def passkey_document(fillers: int, depth: float, key: str) -> str:
    """The document: intro, `fillers` filler sentences with the key line
    before filler round(depth * fillers), then the question (the answer,
    " KEY.", follows it in training)."""
    x = depth * fillers
    before = int(x) + (1 if x - int(x) >= 0.5 else 0)  # C's lround(x) for x >= 0, exactly
    doc = PASSKEY_INTRO
    for i in range(fillers):
        if i == before:
            doc += passkey_line(key)
        doc += PASSKEY_FILLER
    if before >= fillers:
        doc += passkey_line(key)
    return doc + PASSKEY_QUESTION


# --- prepare: the text ------------------------------------------------------------

PACKAGES = ["bible-kjv", "bible-kjv-text", "linux-doc", "python3-doc"]
SEPARATOR = "\n"


class _TextOfHtml(html.parser.HTMLParser):
    """Visible text of an HTML page (script and style dropped)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(page: str) -> str:
    p = _TextOfHtml()
    p.feed(page)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", "".join(p.parts)).strip()


def package_files(package: str):
    """The files a Debian package installed (dpkg -L), [] when it is not installed."""
    try:
        out = subprocess.run(["dpkg", "-L", package], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(p for p in out.splitlines() if os.path.isfile(p))


def package_version(package: str) -> str:
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def read_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    if path.endswith((".html", ".htm", ".html.gz")):
        text = html_to_text(text)
    return text.replace("\r\n", "\n").strip()


def bible_documents(bible_cmd: str):
    """One document per book of the King James Bible, verse references
    dropped. `bible_cmd` prints the whole text ("Ge1:1 In the beginning...")."""
    out = subprocess.run(bible_cmd, shell=True, check=True, capture_output=True, text=True).stdout
    books, current, name = [], [], None
    for line in out.splitlines():
        m = re.match(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not m:
            if current and line.strip():
                current[-1] += " " + line.strip()  # a wrapped verse
            continue
        if m.group(1) != name and current:
            books.append("\n".join(current))
            current = []
        name = m.group(1)
        current.append(m.group(4).strip())
    if current:
        books.append("\n".join(current))
    return books


def essay_documents(path: str, target_chars: int = 24000):
    """Paul Graham's essays (one JSON object, "text") cut into documents of
    about target_chars at paragraph breaks."""
    with open(path, encoding="utf-8") as f:
        text = json.load(f)["text"]
    docs, cur = [], []
    size = 0
    for para in text.split("\n\n"):
        cur.append(para)
        size += len(para) + 2
        if size >= target_chars:
            docs.append("\n\n".join(cur).strip())
            cur, size = [], 0
    if cur:
        docs.append("\n\n".join(cur).strip())
    return [d for d in docs if d]


def capped(docs, max_bytes: int, seed: str):
    """A deterministic sample of `docs` of at most max_bytes (all when they fit),
    in a seeded order so that no one folder dominates."""
    total = sum(len(d.encode("utf-8")) for d in docs)
    if total <= max_bytes:
        return docs
    order = sorted(range(len(docs)), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    out, size = [], 0
    for i in order:
        n = len(docs[i].encode("utf-8"))
        if size + n > max_bytes:
            continue
        out.append(docs[i])
        size += n
    return out


def split_heldout(docs, fraction: float):
    """The last `fraction` of the documents (at least one when there are two)."""
    n = len(docs)
    k = min(n - 1, max(1 if n > 1 else 0, int(round(n * fraction))))
    return docs[: n - k], docs[n - k:]


def cmd_prepare(args) -> int:
    if args.install:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends"] + PACKAGES, check=True, env=env)
    os.makedirs(args.out, exist_ok=True)
    sources = {}
    train, heldout = [], []

    def add(name, docs, heldout_fraction, meta):
        docs = [d for d in docs if d.strip()]
        if not docs:
            print(f"  {name}: nothing found ({meta.get('note', 'not installed?')})", file=sys.stderr)
            sources[name] = dict(meta, documents=0, bytes=0)
            return
        tr, ho = split_heldout(docs, heldout_fraction)
        train.extend((name, d) for d in tr)
        heldout.extend((name, d) for d in ho)
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        sources[name] = dict(meta, documents=len(docs), heldout_documents=len(ho), bytes=nbytes)
        print(f"  {name}: {len(docs)} documents, {nbytes / 1e6:.1f} MB ({len(ho)} held out)")

    mb = 1 << 20
    # The King James Bible, through the `bible` program of bible-kjv.
    bible_cmd = args.bible_cmd
    if bible_cmd is None and shutil.which("bible"):
        bible_cmd = "bible -f gen1:1-rev22:21"
    bible_docs = bible_documents(bible_cmd) if bible_cmd else []
    add("bible-kjv", bible_docs, 0.02,
        {"package": "bible-kjv-text", "version": package_version("bible-kjv-text"), "command": bible_cmd or ""})
    # The kernel's and Python's documentation: their reStructuredText sources.
    for name, package, root, pattern, cap in (
            ("linux-doc", "linux-doc", args.linux_doc_dir, args.linux_doc_pattern, args.linux_doc_mb),
            ("python3-doc", "python3-doc", args.python_doc_dir, args.python_doc_pattern, args.python_doc_mb)):
        if root:
            files = sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)
        else:
            # The packages are metapackages: the text is in their dependency
            # (linux-doc-6.1, python3.11-doc), whose files dpkg lists.
            deps = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", package], capture_output=True,
                                  text=True).stdout if shutil.which("dpkg-query") else ""
            names = [package] + [d.strip().split(" ")[0] for d in deps.split(",") if d.strip()]
            files = [f for n in names for f in package_files(n)]
        files = [f for f in files if re.search(pattern, f)]
        docs = [read_text(f) for f in files]
        add(name, capped(docs, cap * mb, name), 0.02,
            {"package": package, "version": package_version(package), "files": len(files), "cap_mb": cap})
    # Paul Graham's essays, the long natural text: a tenth held out.
    if os.path.isfile(args.essays):
        add("paul-graham-essays", essay_documents(args.essays), 0.1, {"path": os.path.abspath(args.essays)})
    else:
        add("paul-graham-essays", [], 0.1, {"path": args.essays, "note": "file missing"})

    if not train:
        print("prepare: no text found; install the packages (--install) or pass the paths", file=sys.stderr)
        return 1
    # Training documents in a seeded order (the trainer draws windows of the
    # concatenation, so the order mixes the sources).
    rng = random.Random(args.seed)
    rng.shuffle(train)
    with gzip.open(os.path.join(args.out, "train.jsonl.gz"), "wt", encoding="utf-8", compresslevel=9) as f:
        for name, text in train:
            f.write(json.dumps({"source": name, "text": text}, ensure_ascii=False) + "\n")
    # Held-out text, the essays first (the long natural text perplexity runs on).
    heldout.sort(key=lambda nd: nd[0] != "paul-graham-essays")
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(text for _, text in heldout) + "\n")
    with open(os.path.join(args.out, "sources.json"), "w", encoding="utf-8") as f:
        json.dump({"sources": sources, "train_documents": len(train), "heldout_documents": len(heldout),
                   "seed": args.seed}, f, indent=1)
    size = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"prepare: wrote {args.out}: {len(train)} training and {len(heldout)} held-out documents, "
          f"{size / 1e6:.1f} MB on disk")
    if size > 48 * mb:
        print("prepare: warning: more than 48 MiB; the GPU run carries at most 64 MiB with the tree", file=sys.stderr)
    return 0


# --- train: tokenizer, model, save ----------------------------------------------------

SPECIAL_BOS, SPECIAL_EOS = "<|begin_of_text|>", "<|end_of_text|>"
# Llama 3's pre-tokenization regex with digits one at a time (\p{N} rather
# than \p{N}{1,3}), so a passkey is copied digit by digit.
PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def read_documents(data_dir: str):
    docs = []
    with gzip.open(os.path.join(data_dir, "train.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
    return docs


def train_tokenizer(docs, vocab_size: int, out_dir: str, context: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[SPECIAL_BOS, SPECIAL_EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The passkey text too, so its words are whole tokens.
    extra = [passkey_document(20, 0.5, "12345") + " 12345."]
    tok.train_from_iterator(docs + extra, trainer=trainer, length=len(docs) + 1)
    bos, eos = tok.token_to_id(SPECIAL_BOS), tok.token_to_id(SPECIAL_EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_BOS} $A", pair=f"{SPECIAL_BOS} $A {SPECIAL_BOS} $B", special_tokens=[(SPECIAL_BOS, bos)])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_BOS, "eos_token": SPECIAL_EOS,
                   "add_bos_token": True, "add_eos_token": False, "model_max_length": context,
                   "clean_up_tokenization_spaces": False}, f, indent=1)
    # It must round-trip what it is trained on.
    sample = docs[0][:2000] + passkey_document(3, 0.5, "40917")
    ids = tok.encode(sample).ids
    assert ids[0] == bos, "the post-processor adds BOS"
    assert tok.decode(ids, skip_special_tokens=True) == sample, "byte-level BPE round-trips the text"
    digits = tok.encode(" 40917", add_special_tokens=False).tokens
    assert len(digits) == 6, f"digits are one token each: {digits}"
    return tok, bos, eos


def llama3_inv_freq(theta, dim, factor, low, high, original):
    inv = [1.0 / theta ** (i / dim) for i in range(0, dim, 2)]
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < original / high:
            out.append(f)
        elif wavelen > original / low:
            out.append(f / factor)
        else:
            s = (original / wavelen - low) / (high - low)
            out.append((1 - s) * f / factor + s * f)
    return out


def build_model(args, vocab_size, bos, eos):
    import torch
    import transformers

    rope = dict(rope_type="llama3", rope_theta=500000.0, factor=args.rope_factor, low_freq_factor=1.0,
                high_freq_factor=4.0, original_max_position_embeddings=args.seq_len // int(args.rope_factor))
    common = dict(vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
                  num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                  num_key_value_heads=args.kv_heads, head_dim=64, max_position_embeddings=args.seq_len,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
                  attention_bias=False, mlp_bias=False, initializer_range=0.02)
    want = torch.tensor(llama3_inv_freq(rope["rope_theta"], 64, rope["factor"], 1.0, 4.0,
                                        rope["original_max_position_embeddings"]), dtype=torch.float64)
    errors = []
    # transformers 5 takes rope_parameters; 4.x rope_theta + rope_scaling.
    for style in ("rope_parameters", "legacy"):
        kw = dict(common)
        if style == "rope_parameters":
            kw["rope_parameters"] = dict(rope)
        else:
            r = dict(rope)
            kw["rope_theta"] = r.pop("rope_theta")
            kw["rope_scaling"] = r
        try:
            config = transformers.LlamaConfig(**kw)
            try:
                model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
            except (TypeError, ValueError):
                model = transformers.LlamaForCausalLM(config)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{style}: {type(e).__name__}: {e}")
            continue
        got = model.model.rotary_emb.inv_freq.to(torch.float64).cpu()
        if got.shape == want.shape and float(((got - want).abs() / want).max()) < 1e-5:
            return model
        errors.append(f"{style}: the model's inv_freq is not the llama3 rope asked for")
    raise RuntimeError(f"could not build the model: {errors}")


class Batches:
    """Training sequences of seq_len tokens: windows of the concatenated
    corpus, and with probability passkey_share a passkey document of random
    length (filler or essay haystack, key at a random depth) at the start,
    the rest of the window natural text. Returns ids and per-token loss
    weights (the answer's tokens weigh answer_weight)."""

    def __init__(self, tok, corpus, args, bos, eos, seed):
        import torch

        self.torch, self.tok, self.corpus, self.args = torch, tok, corpus, args
        self.bos, self.eos = bos, eos
        self.rng = random.Random(seed)
        enc = lambda s: tok.encode(s, add_special_tokens=False).ids
        self.intro, self.filler, self.question = enc(PASSKEY_INTRO), enc(PASSKEY_FILLER), enc(PASSKEY_QUESTION)
        self.enc = enc

    def passkey(self, length):
        r = self.rng
        key = str(r.randint(10000, 99999))
        line, answer = self.enc(passkey_line(key)), self.enc(f" {key}.")
        room = length - 1 - len(self.intro) - len(line) - len(self.question) - len(answer) - 1
        if room < len(self.filler):
            room = len(self.filler)
        if r.random() < 0.5:  # the evaluation's filler
            n = room // len(self.filler)
            hay = [self.filler] * n
        else:  # an essay-like haystack: natural text in filler-sized pieces
            start = r.randrange(0, len(self.corpus) - room - 1)
            chunk = self.corpus[start:start + room].tolist()
            piece = len(self.filler)
            hay = [chunk[i:i + piece] for i in range(0, len(chunk), piece)]
        at = int(math.floor(r.random() * len(hay) + 0.5))
        ids = [self.bos] + self.intro
        for i, h in enumerate(hay):
            if i == at:
                ids += line
            ids += h
        if at >= len(hay):
            ids += line
        ids += self.question
        weights = [1.0] * len(ids)
        ids += answer + [self.eos]
        weights += [self.args.answer_weight] * (len(answer) - 1) + [1.0, 1.0]  # the digits, then '.' and EOS
        return ids, weights

    def next(self, batch):
        torch, r, T = self.torch, self.rng, self.args.seq_len
        ids = torch.empty((batch, T + 1), dtype=torch.long)
        weights = torch.ones((batch, T), dtype=torch.float32)
        for b in range(batch):
            seq, w = [], []
            if r.random() < self.args.passkey_share:
                length = int(math.exp(r.uniform(math.log(256), math.log(T))))
                seq, w = self.passkey(min(length, T))
            start = r.randrange(0, len(self.corpus) - (T + 1))
            rest = self.corpus[start:start + (T + 1 - len(seq))].tolist()
            seq = (seq + rest)[:T + 1]
            w = (w + [1.0] * (T + 1))[:T + 1]
            ids[b] = torch.tensor(seq, dtype=torch.long)
            weights[b] = torch.tensor(w[1:], dtype=torch.float32)  # weight of predicting token t+1
        return ids, weights


def evaluate(model, tok, heldout_ids, args, bos, eos, device):
    """Mean next-token loss on held-out windows of seq_len, and a passkey check."""
    import torch
    import torch.nn.functional as F

    model.eval()
    T = args.seq_len
    losses = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for w in range(min(args.eval_windows, len(heldout_ids) // T)):
            x = heldout_ids[w * T:(w + 1) * T].to(device)[None]
            logits = model(input_ids=x).logits.float()
            losses.append(float(F.cross_entropy(logits[0, :-1], x[0, 1:])))
    passkey = {}
    rng = random.Random(7)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for length in (2048, T):
            for depth in (0.0, 0.5, 1.0):
                right = 0
                for _ in range(args.eval_passkeys):
                    key = str(rng.randint(10000, 99999))
                    fillers = max(1, length // len(tok.encode(PASSKEY_FILLER, add_special_tokens=False).ids))
                    while True:
                        ids = tok.encode(passkey_document(fillers, depth, key)).ids
                        if len(ids) <= length - 8 or fillers == 1:
                            break
                        fillers -= max(1, (len(ids) - length + 8) // 20)
                    x = torch.tensor([ids], device=device)
                    for _ in range(7):
                        nxt = model(input_ids=x).logits[0, -1].argmax()
                        x = torch.cat([x, nxt.view(1, 1)], dim=1)
                    answer = tok.decode(x[0, len(ids):].tolist(), skip_special_tokens=True).strip()
                    right += answer.startswith(key)
                passkey[f"{length}@{depth}"] = right / args.eval_passkeys
    model.train()
    return (sum(losses) / len(losses) if losses else float("nan")), passkey


def cmd_train(args) -> int:
    import torch
    import torch.nn.functional as F

    t_start = time.time()
    if not torch.cuda.is_available():
        print("train: no GPU (torch.cuda.is_available() is False); this step is for the GPU machine",
              file=sys.stderr)
        return 1
    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)

    docs = read_documents(args.data)
    print(f"[{time.time() - t_start:5.1f}s] {len(docs)} training documents", flush=True)
    tok, bos, eos = train_tokenizer(docs, args.vocab, args.out, args.seq_len)
    print(f"[{time.time() - t_start:5.1f}s] tokenizer: {tok.get_vocab_size()} ids", flush=True)
    encoded = tok.encode_batch(docs)  # BOS per document (the post-processor)
    flat = []
    for e in encoded:
        flat.extend(e.ids)
        flat.append(eos)
    corpus = torch.tensor(flat, dtype=torch.int32)
    with open(os.path.join(args.data, "heldout.txt"), encoding="utf-8") as f:
        heldout = torch.tensor(tok.encode(f.read()).ids, dtype=torch.long)
    print(f"[{time.time() - t_start:5.1f}s] corpus {len(corpus) / 1e6:.2f}M tokens, held out "
          f"{len(heldout) / 1e3:.0f}k", flush=True)

    model = build_model(args, tok.get_vocab_size(), bos, eos).to(device)
    params = sum(p.numel() for p in model.parameters())
    bf16_bytes = 2 * sum(p.numel() for n, p in model.named_parameters() if "lm_head" not in n)
    print(f"[{time.time() - t_start:5.1f}s] model: {params / 1e6:.2f}M parameters, {bf16_bytes / 1e6:.1f} MB in bf16",
          flush=True)
    if bf16_bytes > 24e6:
        print("train: the model would not fit the 24 MB budget; use fewer layers or a smaller --hidden",
              file=sys.stderr)
        return 1
    step_model = torch.compile(model) if args.compile else model
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    batches = Batches(tok, corpus, args, bos, eos, args.seed)

    budget = args.minutes * 60.0
    train_start = time.time()
    total_steps = None  # fixed once the step time is known
    warm_elapsed = 0.0
    step, tokens, log = 0, 0, []
    while True:
        elapsed = time.time() - train_start
        if step == 3:
            warm_elapsed = elapsed  # the first steps include one-time set-up
        if step == args.calibrate_steps:
            per_step = (elapsed - warm_elapsed) / (step - 3)
            total_steps = max(step + 1, step + int((budget - elapsed) / per_step))
            print(f"[{time.time() - t_start:5.1f}s] {per_step * 1e3:.0f} ms per step: {total_steps} steps in "
                  f"{args.minutes} minutes", flush=True)
        if total_steps is not None and step >= total_steps:
            break
        # Linear warm-up, then cosine to a tenth of the peak.
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            horizon = total_steps if total_steps else step + 1
            progress = min(1.0, (step - args.warmup) / max(1, horizon - args.warmup))
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, weights = batches.next(args.batch)
        ids, weights = ids.to(device, non_blocking=True), weights.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = step_model(input_ids=ids[:, :-1]).logits
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = (ce * weights.reshape(-1)).sum() / weights.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        step += 1
        tokens += ids.shape[0] * args.seq_len
        if step % args.log_every == 0 or step == 1:
            entry = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm,
                     "tokens": tokens, "seconds": round(time.time() - train_start, 1)}
            log.append(entry)
            print(json.dumps(entry), flush=True)

    train_seconds = time.time() - train_start
    heldout_loss, passkey = evaluate(model, tok, heldout, args, bos, eos, device)
    print(f"[{time.time() - t_start:5.1f}s] held-out loss {heldout_loss:.4f} (ppl {math.exp(heldout_loss):.2f}), "
          f"passkey {passkey}", flush=True)

    # Save in bf16, reload, and check the reloaded checkpoint computes what the
    # trained model computed (autocast, as trained). The live model is not
    # converted: .to(bfloat16) would also round its RoPE inv_freq buffer.
    import transformers

    def load(dtype):
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(args.out, dtype=dtype).to(device).eval()
        except TypeError:
            return transformers.AutoModelForCausalLM.from_pretrained(args.out, torch_dtype=dtype).to(device).eval()

    probe = heldout[:2048].to(device)[None]
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = model(input_ids=probe).logits.float()
    state = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to embed_tokens: saved once
    model.save_pretrained(args.out, state_dict=state, safe_serialization=True)
    again = load(torch.bfloat16)
    with torch.no_grad():
        b = again(input_ids=probe).logits.float()
    reload_err = float((a - b).abs().max())
    nll = lambda logits: float(F.cross_entropy(logits[0, :-1], probe[0, 1:]))
    reload_loss = (nll(a), nll(b))
    del again
    if args.reference:
        # What Hugging Face computes from the saved checkpoint in float32 (the
        # bf16 weights are exact in float32): Seer's CPU engine, which
        # computes in float32, is tested against it (engine test SmallModel).
        ref = load(torch.float32)
        ids = heldout[:args.reference_tokens].to(device)[None]
        with torch.no_grad():
            logits = ref(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        nll_pos = -logp[:-1].gather(1, ids[0, 1:, None])[:, 0]
        with open(args.reference, "w", encoding="utf-8") as f:
            json.dump({"model": "tools/train_small_model.py output", "transformers": transformers.__version__,
                       "torch": torch.__version__, "dtype": "float32", "ids": ids[0].tolist(),
                       "argmax": logits.argmax(-1).tolist(), "next_token_nll": nll_pos.tolist(),
                       "last_logits": logits[-1].tolist()}, f)
        del ref
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.data, "sources.json"), encoding="utf-8") as f:
        sources = json.load(f)
    note = {
        "data": sources, "corpus_tokens": len(corpus), "heldout_tokens": len(heldout),
        "tokenizer": {"type": "byte-level BPE", "vocab_size": tok.get_vocab_size(), "digits": "one token each"},
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.hidden // 64, "kv_heads": args.kv_heads,
                  "head_dim": 64, "intermediate": args.intermediate, "context": args.seq_len,
                  "rope": "llama3, theta 5e5, factor %g from %d" % (args.rope_factor,
                                                                   args.seq_len // int(args.rope_factor)),
                  "parameters": params, "model_safetensors_bytes": size},
        "training": {"steps": step, "tokens": tokens, "batch": args.batch, "seq_len": args.seq_len,
                     "lr": args.lr, "warmup": args.warmup, "passkey_share": args.passkey_share,
                     "answer_weight": args.answer_weight, "seconds": round(train_seconds, 1),
                     "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                     "transformers": transformers.__version__, "log": log},
        "heldout_loss": heldout_loss, "heldout_ppl": math.exp(heldout_loss), "passkey_accuracy": passkey,
        "reload_max_abs_logit_diff": reload_err,
        "reload_probe_nll": {"trained_autocast": reload_loss[0], "saved_bf16": reload_loss[1]},
        "date": time.strftime("%Y-%m-%d"),
    }
    with open(os.path.join(args.out, "training.json"), "w", encoding="utf-8") as f:
        json.dump(note, f, indent=1)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(f"# Seer's small long-context model\n\nTrained by tools/train_small_model.py on "
                f"{note['training']['device']}, {note['date']}: {step} steps, {tokens / 1e6:.1f}M tokens in "
                f"{train_seconds / 60:.1f} minutes. Llama architecture, {args.layers} layers, hidden {args.hidden}, "
                f"{args.hidden // 64} heads over {args.kv_heads} KV heads of 64, {args.seq_len}-token context "
                f"(llama3 RoPE), tied embeddings, {params / 1e6:.1f}M parameters ({size / 1e6:.1f} MB in bf16); "
                f"its own byte-level BPE tokenizer of {tok.get_vocab_size()} ids.\n\n"
                f"Data: {', '.join(sources['sources'])} ({len(corpus) / 1e6:.1f}M tokens) and synthetic passkey "
                f"documents ({args.passkey_share:.0%} of sequences). Held-out loss {heldout_loss:.4f} "
                f"(perplexity {math.exp(heldout_loss):.2f}) on {args.seq_len}-token windows. Passkey accuracy: "
                f"{json.dumps(passkey)}. Details in training.json.\n")
    total = time.time() - t_start
    print(f"[{total:5.1f}s] saved {args.out} ({size / 1e6:.1f} MB model.safetensors, reload max |dlogit| "
          f"{reload_err:.2e}, probe loss {reload_loss[0]:.4f} trained vs {reload_loss[1]:.4f} saved)", flush=True)
    if size > 24e6:
        print("train: model.safetensors is over 24 MB", file=sys.stderr)
        return 1
    return 0


def cmd_gate_text(args) -> int:
    """The first --documents training documents as one text file each: what
    `seer-train --data` reads to train the model's gates."""
    os.makedirs(args.out, exist_ok=True)
    n = 0
    with gzip.open(os.path.join(args.data, "train.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            if n >= args.documents:
                break
            with open(os.path.join(args.out, f"{n:05d}.txt"), "w", encoding="utf-8") as out:
                out.write(json.loads(line)["text"])
            n += 1
    print(f"gate-text: wrote {n} documents to {args.out}")
    return 0


def cmd_passkey_example(args) -> int:
    sys.stdout.write(passkey_document(args.fillers, args.depth, args.key))
    return 0


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("prepare", help="gather the training and held-out text (here, standard library only)")
    pp.add_argument("--out", required=True)
    pp.add_argument("--install", action="store_true", help="apt-get install " + " ".join(PACKAGES) + " first")
    pp.add_argument("--essays", default=os.path.join(here, "..", "..", "shared", "data", "PaulGrahamEssays.json"))
    pp.add_argument("--bible-cmd", default=None, help="command printing the whole Bible (default: bible -f ...)")
    pp.add_argument("--linux-doc-dir", default=None, help="a folder to read instead of linux-doc's files")
    pp.add_argument("--python-doc-dir", default=None, help="a folder to read instead of python3-doc's files")
    pp.add_argument("--linux-doc-pattern", default=r"/_sources/.*\.rst\.txt$",
                    help="regex of the files used (the packages' reStructuredText sources)")
    pp.add_argument("--python-doc-pattern", default=r"/_sources/.*\.rst\.txt$")
    pp.add_argument("--linux-doc-mb", type=int, default=40, help="at most this much of the kernel's docs")
    pp.add_argument("--python-doc-mb", type=int, default=12)
    pp.add_argument("--seed", type=int, default=1)
    pp.set_defaults(func=cmd_prepare)

    tp = sub.add_parser("train", help="train tokenizer and model (the GPU machine)")
    tp.add_argument("--data", required=True, help="the folder `prepare` wrote")
    tp.add_argument("--out", required=True)
    tp.add_argument("--minutes", type=float, default=6.0, help="wall clock of the training loop")
    tp.add_argument("--vocab", type=int, default=4096)
    tp.add_argument("--layers", type=int, default=6)
    tp.add_argument("--hidden", type=int, default=384, help="a multiple of 64 (heads of 64)")
    tp.add_argument("--kv-heads", type=int, default=2)
    tp.add_argument("--intermediate", type=int, default=1024)
    tp.add_argument("--seq-len", type=int, default=8192, help="the context, trained at full length")
    tp.add_argument("--rope-factor", type=float, default=4.0, help="llama3 scaling from seq_len / factor")
    tp.add_argument("--batch", type=int, default=16)
    tp.add_argument("--lr", type=float, default=3e-3)
    tp.add_argument("--warmup", type=int, default=50)
    tp.add_argument("--passkey-share", type=float, default=0.3)
    tp.add_argument("--answer-weight", type=float, default=10.0)
    tp.add_argument("--calibrate-steps", type=int, default=13, help="steps timed (from the 4th) to size the run")
    tp.add_argument("--eval-windows", type=int, default=8)
    tp.add_argument("--eval-passkeys", type=int, default=4)
    tp.add_argument("--log-every", type=int, default=25)
    tp.add_argument("--compile", action="store_true", help="torch.compile the model (faster, slower to start)")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--reference", default=None,
                    help="write Hugging Face's float32 logits of the saved checkpoint on held-out text here (JSON)")
    tp.add_argument("--reference-tokens", type=int, default=512)
    tp.set_defaults(func=cmd_train)

    gp = sub.add_parser("gate-text", help="write training documents as text files for seer-train --data")
    gp.add_argument("--data", required=True, help="the folder `prepare` wrote")
    gp.add_argument("--out", required=True)
    gp.add_argument("--documents", type=int, default=1200)
    gp.set_defaults(func=cmd_gate_text)

    ep = sub.add_parser("passkey-example", help="print one passkey document")
    ep.add_argument("--fillers", type=int, required=True)
    ep.add_argument("--depth", type=float, required=True)
    ep.add_argument("--key", required=True)
    ep.set_defaults(func=cmd_passkey_example)

    args = p.parse_args(argv)
    if args.command == "train" and (args.hidden % 64 or (args.hidden // 64) % args.kv_heads):
        p.error("--hidden must be a multiple of 64 whose head count is a multiple of --kv-heads")
    if args.command == "train" and args.calibrate_steps < 5:
        p.error("--calibrate-steps must be at least 5 (steps 4 on are timed)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
