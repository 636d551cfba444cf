#!/usr/bin/python3
"""Stage tokenizer: trains a byte-level BPE tokenizer on the corpus and encodes both splits.

The tokenizer is Llama-3 shaped (its pre-tokenization regex, GPT-2 byte alphabet, BPE merges,
a post-processor that puts <|begin_of_text|> first), the last two ids being <|begin_of_text|>
and <|end_of_text|>. Trainer: Hugging Face `tokenizers` when importable (the GPU machine), else
the slow pure-Python trainer of tools/make_tokenizer.py (small corpora: the CI smoke test).
Encoder: `tokenizers`, else a pure-Python byte-level BPE (python3-regex).

Writes OUT/tokenizer.json, OUT/tokenizer_config.json (with a chat template), OUT/train.npy and
OUT/val.npy (each document as <|begin_of_text|> ids <|end_of_text|>, documents back to back) and
OUT/val_lengths.npy (the id count of each validation document without the two specials).
--existing takes a given tokenizer.json (a Hugging Face teacher's, with the tokenizer_config.json
beside it) instead of training one. Skips the work whose outputs exist.

  python3 tools/linearize/tokenizer.py --corpus corpus --out work/tok --vocab 8192
"""
import importlib.util
import os
import shutil
import time

import common
import corpus as corpus_stage
import numpy as np

STAGE = "tokenizer"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}: "
                 "{{ message['content'] | trim }}\n\n{% endfor %}"
                 "{% if add_generation_prompt %}Assistant:{% endif %}")


def have_hf():
    return importlib.util.find_spec("tokenizers") is not None


def train_hf(texts, vocab, path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    import make_tokenizer
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                          use_regex=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(make_tokenizer.LLAMA3_PATTERN), behavior="isolated",
                             invert=False), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([BOS, EOS])
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, bos)])])
    tok.save(path)


def train_python(texts, vocab, path):
    import json
    import make_tokenizer
    # make_tokenizer checks its merge count against this module constant.
    make_tokenizer.NUM_MERGES = vocab - 256 - 2
    merges = make_tokenizer.train("\n\n".join(texts), make_tokenizer.NUM_MERGES)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(make_tokenizer.tokenizer_json(merges), f, ensure_ascii=False, indent=1)


class PyBPE:
    """Byte-level BPE encoding of a tokenizer.json in pure Python (no special tokens added)."""

    def __init__(self, path):
        import regex
        import make_tokenizer
        spec = common.read_json(path)
        self.vocab = spec["model"]["vocab"]
        merges = spec["model"]["merges"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.alphabet = make_tokenizer.bytes_to_unicode()
        self.pattern = regex.compile(make_tokenizer.LLAMA3_PATTERN)
        self.cache = {}

    def _word(self, word):
        parts = [self.alphabet[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            best = min(range(len(parts) - 1),
                       key=lambda i: self.ranks.get((parts[i], parts[i + 1]), 1 << 30))
            if (parts[best], parts[best + 1]) not in self.ranks:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return [self.vocab[p] for p in parts]

    def encode(self, text):
        out = []
        for word in self.pattern.findall(text):
            ids = self.cache.get(word)
            if ids is None:
                ids = self.cache[word] = self._word(word)
            out.extend(ids)
        return out


def special_ids(path):
    """(bos, eos) ids of a tokenizer.json: ours and Llama-3's <|begin_of_text|> and
    <|end_of_text|>, else the tokenizer_config.json beside it, else <s> and </s>."""
    special = {t["content"]: t["id"] for t in common.read_json(path)["added_tokens"]}
    names = [BOS, EOS]
    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if (BOS not in special or EOS not in special) and os.path.exists(config_path):
        config = common.read_json(config_path)
        names = [t if isinstance(t, str) else t["content"]
                 for t in (config["bos_token"], config["eos_token"])]
    elif BOS not in special:
        names = ["<s>", "</s>"]
    return special[names[0]], special[names[1]]


def encoder(path):
    """(encode_batch(texts) -> [[ids]], bos id, eos id)."""
    bos, eos = special_ids(path)
    if have_hf():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(path)
        return (lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
                bos, eos)
    py = PyBPE(path)
    return (lambda texts: [py.encode(t) for t in texts]), bos, eos


def encode_split(encode, bos, eos, texts, dtype):
    chunks, lengths = [], []
    for i in range(0, len(texts), 256):
        for ids in encode(texts[i:i + 256]):
            chunks.append(np.asarray([bos] + ids + [eos], dtype=dtype))
            lengths.append(len(ids))
    return np.concatenate(chunks), np.asarray(lengths, dtype=np.int64)


def main():
    p = common.parser(__doc__)
    p.add_argument("--corpus", required=True, help="corpus stage folder")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary size incl. 2 specials")
    p.add_argument("--train-bytes", type=int, default=40_000_000,
                   help="train the merges on about this much text (documents strided)")
    p.add_argument("--trainer", choices=["auto", "hf", "python"], default="auto")
    p.add_argument("--existing", metavar="TOKENIZER_JSON",
                   help="use this tokenizer (e.g. the teacher's) instead of training one")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "tokenizer.json")
    start = time.time()
    train_docs = [d["text"] for d in corpus_stage.read_jsonl_xz(os.path.join(a.corpus, "train.jsonl.xz"))]
    val_docs = [d["text"] for d in corpus_stage.read_jsonl_xz(os.path.join(a.corpus, "val.jsonl.xz"))]
    common.log(STAGE, f"read {len(train_docs)} train / {len(val_docs)} val documents "
                      f"in {time.time() - start:.0f} s")
    if a.existing and not os.path.exists(path):
        # A given teacher's tokenizer: the splits are encoded with it, nothing is trained.
        for name in ("tokenizer.json", "tokenizer_config.json"):
            source = os.path.join(os.path.dirname(os.path.abspath(a.existing)), name)
            if name == "tokenizer.json" or os.path.exists(source):
                shutil.copyfile(a.existing if name == "tokenizer.json" else source,
                                os.path.join(a.out, name))
    if not os.path.exists(path):
        total = sum(len(t) for t in train_docs)
        stride = max(1, round(total / a.train_bytes))
        sample = train_docs[::stride]
        trainer = a.trainer if a.trainer != "auto" else ("hf" if have_hf() else "python")
        t0 = time.time()
        (train_hf if trainer == "hf" else train_python)(sample, a.vocab, path + ".tmp")
        os.replace(path + ".tmp", path)
        common.log(STAGE, f"trained {trainer} BPE on {sum(len(t) for t in sample):,} characters "
                          f"in {time.time() - t0:.0f} s")
        config = {"bos_token": BOS, "eos_token": EOS, "pad_token": None, "unk_token": None,
                  "model_max_length": 1 << 20, "add_bos_token": True, "add_eos_token": False,
                  "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
                  "tokenizer_class": "PreTrainedTokenizerFast"}
        common.write_json(os.path.join(a.out, "tokenizer_config.json"), config)
    encode, bos, eos = encoder(path)
    spec = common.read_json(path)
    top = max(list(spec["model"]["vocab"].values()) + [t["id"] for t in spec["added_tokens"]])
    dtype = np.uint16 if top < 65536 else np.int32
    for split, docs in (("val", val_docs), ("train", train_docs)):
        out = os.path.join(a.out, f"{split}.npy")
        if os.path.exists(out):
            continue
        t0 = time.time()
        ids, lengths = encode_split(encode, bos, eos, docs, dtype)
        np.save(out + ".tmp.npy", ids)
        os.replace(out + ".tmp.npy", out)
        if split == "val":
            np.save(os.path.join(a.out, "val_lengths.npy"), lengths)
        chars = sum(len(t) for t in docs)
        common.log(STAGE, f"{split}: {len(ids):,} tokens ({chars / len(ids):.2f} chars/token) "
                          f"in {time.time() - t0:.0f} s")
    common.log(STAGE, f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
