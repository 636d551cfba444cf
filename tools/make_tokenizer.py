#!/usr/bin/python3
"""Trains the byte-level BPE tokenizer of the lizard-tiny model and writes it as tokenizer.json.

The format and pipeline follow Llama-3: the Llama-3 pre-tokenization regex, GPT-2 byte-level
alphabet, BPE merges, and a TemplateProcessing post-processor that puts <|begin_of_text|> first.
Vocabulary: 256 byte tokens (id = byte value), 254 learned merges (ids 256..509), then the
special tokens <|begin_of_text|> = 510 and <|end_of_text|> = 511.

Usage: /usr/bin/python3 tools/make_tokenizer.py [--corpus FILE] [--out FILE]
Only the standard library is used; the output is deterministic.
"""
import argparse
import collections
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_MERGES = 254
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>"]

# The pre-tokenization regex written into tokenizer.json (exactly Llama-3's).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Python's re has no \p{..}: the same pattern with letters as [^\W\d_] and numbers as \d. It only
# decides which words the merges are learned from; encoding uses LLAMA3_PATTERN.
TRAINING_PATTERN = re.compile(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|(?:[^\r\n\w]|_)?[^\W\d_]+|\d{1,3}|"
                              r" ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    """GPT-2's alphabet: printable bytes stand for themselves, the rest get U+0100 onwards."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) +
                 list(range(0xAE, 0xFF + 1)))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def train(text, num_merges):
    """Returns the merges (pairs of token strings) learned from text, most frequent first."""
    alphabet = bytes_to_unicode()
    word_counts = collections.Counter(
        tuple(alphabet[b] for b in word.encode("utf-8")) for word in TRAINING_PATTERN.findall(text))
    words = [[list(symbols), count] for symbols, count in sorted(word_counts.items())]
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            raise SystemExit("corpus too small: ran out of pairs to merge")
        # Most frequent pair; ties go to the lexicographically smallest for determinism.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for entry in words:
            symbols, merged = entry[0], []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            entry[0] = merged
    return merges


def tokenizer_json(merges):
    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    assert len(vocab) == 256 + NUM_MERGES, "a merge produced a duplicate token"
    specials = {name: len(vocab) + i for i, name in enumerate(SPECIAL_TOKENS)}
    bos = SPECIAL_TOKENS[0]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": token_id, "content": name, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for name, token_id in specials.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
                 "invert": False},
                byte_level,
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                byte_level,
                {
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos: {"id": bos, "ids": [specials[bos]], "tokens": [bos]}},
                },
            ],
        },
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{left} {right}" for left, right in merges],
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=os.path.join(HERE, "tokenizer_corpus.txt"))
    parser.add_argument("--out", default=os.path.join(HERE, "..", "models", "lizard-tiny",
                                                      "tokenizer.json"))
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        text = f.read()
    merges = train(text, NUM_MERGES)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(merges), f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {256 + len(merges)} tokens + {len(SPECIAL_TOKENS)} special")


if __name__ == "__main__":
    main()
