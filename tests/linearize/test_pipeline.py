#!/usr/bin/python3
"""Smoke test of the whole pipeline on the CPU: corpus (from data/sample.txt), tokenizer (the
pure-Python trainer), teacher, stage 1, stage 2 (a few optimizer steps each), export of both
models, then lizard-cli info and generate on them, resumption, and a tiny evaluation."""
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.path.join(ROOT, "tools", "linearize")
CLI = os.environ["LIZARD_CLI"]


def run(stage, *args):
    t0 = time.time()
    out = subprocess.run([sys.executable, os.path.join(TOOLS, stage + ".py")] + list(args),
                         check=True, capture_output=True, text=True).stdout
    print(f"{stage}: {time.time() - t0:.1f} s")
    return out


def cli(*args):
    return subprocess.run([CLI] + list(args), check=True, capture_output=True, text=True).stdout


def main():
    with tempfile.TemporaryDirectory() as w:
        j = lambda *p: os.path.join(w, *p)  # noqa: E731
        small = ["--batch", "4", "--seq", "64", "--log-every", "1"]
        run("corpus", "--out", j("corpus"), "--from-text", os.path.join(HERE, "data", "sample.txt"),
            "--recall-docs", "20")
        run("tokenizer", "--corpus", j("corpus"), "--out", j("tok"), "--vocab", "400")
        # A teacher's own tokenizer instead of a trained one: the splits use its ids.
        run("tokenizer", "--corpus", j("corpus"), "--out", j("tok-demo"), "--existing",
            os.path.join(ROOT, "models", "lizard-demo", "tokenizer.json"))
        import numpy as np
        assert np.load(j("tok-demo", "val.npy"))[0] == 8190  # lizard-demo's <|begin_of_text|>
        out = run("teacher", "--data", j("tok"), "--out", j("teacher"), "--steps", "4",
                  "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                  "--inter", "128", *small)
        assert "tok/s" in out and "ETA" in out and "loss" in out, out
        run("stage1", "--teacher", j("teacher", "model"), "--data", j("tok"), "--out", j("s1"),
            "--steps", "3", "--feature-dim", "8", "--window", "16", "--meta", "2", *small)
        run("stage2", "--init", j("s1", "model"), "--data", j("tok"), "--out", j("s2"),
            "--steps", "2", *small)
        # Resumable: a stage whose result exists does nothing; with more steps it continues.
        assert "done already" in run("stage2", "--init", j("s1", "model"), "--data", j("tok"),
                                     "--out", j("s2"), "--steps", "2", *small)
        os.remove(j("s2", "result.json"))
        out = run("stage2", "--init", j("s1", "model"), "--data", j("tok"), "--out", j("s2"),
                  "--steps", "3", *small)
        assert "resumed at step 2" in out, out
        run("export", "--model", j("s2", "model"), "--tokenizer", j("tok"), "--out", j("lizard"))
        run("export", "--model", j("teacher", "model"), "--tokenizer", j("tok"), "--out", j("llama"))
        config = json.load(open(j("lizard", "config.json")))
        assert config["lizard"]["window_size"] == 16 and config["torch_dtype"] == "bfloat16"
        info = cli("info", "--model", j("lizard"))
        assert "2 lizard, 0 softmax" in info, info
        assert "0 lizard, 2 softmax" in cli("info", "--model", j("llama"))
        for m in ("lizard", "llama"):
            text = cli("generate", "--model", j(m), "--prompt", "And God said",
                       "--max-new-tokens", "8")
            assert len(text.split("\n")[0].split()) >= 1, text
        run("evaluate", "--model", "teacher=" + j("llama"), "--model", "lizard=" + j("lizard"),
            "--data", j("tok"), "--out", j("eval.json"), "--seq", "32", "--contexts", "1,4",
            "--passkey", "16", "--trials", "1", "--mqar", "4", "--sample-tokens", "4")
        result = json.load(open(j("eval.json")))
        assert set(result["models"]) == {"teacher", "lizard"}
        assert result["models"]["lizard"]["kv_bytes_per_token"] == 0
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
