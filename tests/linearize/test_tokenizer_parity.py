#!/usr/bin/python3
"""The engine's C++ tokenizer (through linearize_encode_docs) and the pipeline's pure-Python
encoder give the ids Hugging Face `tokenizers` gave for validation documents of the corpus
(data/val_sample.txt, ids in data/val_sample_ids.txt written on the GPU machine), with the
shipped demo tokenizer. `--text FILE --ids FILE` checks other documents the same way."""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(ROOT, "tools", "linearize"), os.path.join(ROOT, "tools")]

import tokenizer as tok_stage  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "lizard-demo",
                                                        "tokenizer.json"))
    p.add_argument("--text", default=os.path.join(HERE, "data", "val_sample.txt"),
                   help="documents separated by 0x1e")
    p.add_argument("--ids", default=os.path.join(HERE, "data", "val_sample_ids.txt"),
                   help="Hugging Face ids, one document per line")
    a = p.parse_args()
    with open(a.text, encoding="utf-8") as f:
        docs = f.read().split("\x1e")
    with open(a.ids) as f:
        expected = [[int(x) for x in line.split()] for line in f]
    assert len(docs) == len(expected), (len(docs), len(expected))
    with open(os.path.join(ROOT, "models", "llama-demo", "tokenizer.json"), "rb") as f1, \
            open(os.path.join(ROOT, "models", "lizard-demo", "tokenizer.json"), "rb") as f2:
        assert f1.read() == f2.read(), "the two demo models must share one tokenizer"
    out = subprocess.run([os.environ["LIZARD_ENCODE_DOCS"], a.tokenizer, a.text], check=True,
                         capture_output=True, text=True).stdout
    cpp = [[int(x) for x in line.split()] for line in out.split("\n")[:len(docs)]]
    python = tok_stage.PyBPE(a.tokenizer)
    failed = 0
    for i, (doc, want) in enumerate(zip(docs, expected)):
        for name, got in (("C++", cpp[i]), ("Python", python.encode(doc))):
            if got != want:
                failed += 1
                first = next((j for j, (x, y) in enumerate(zip(got, want)) if x != y),
                             min(len(got), len(want)))
                print(f"document {i}: {name} differs from Hugging Face at id {first}: "
                      f"{got[first:first + 5]} vs {want[first:first + 5]}")
    tokens = sum(len(e) for e in expected)
    print(f"{len(docs)} documents, {tokens} tokens: {2 * len(docs) - failed} passed, "
          f"{failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
