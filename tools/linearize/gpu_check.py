#!/usr/bin/env python3
"""The shipped trained models on the engine's CUDA backend against its CPU backend (device run).

For models/llama-demo and models/lizard-demo: greedy `lizard-cli generate` of 64 tokens on the 8
prompts of tests/linearize/test_fidelity.py with --backend cuda and --backend cpu; where they
part, the CPU logits (`lizard-cli logits`) say how close the CPU's top two were (CUDA computes
in bf16, the CPU in fp32, so a near tie may go either way). Then `lizard-cli drift` on
lizard-demo: bf16 against fp32 S/z state over 10,240 greedy tokens, on CUDA.

  python3 tools/linearize/gpu_check.py --cli BUNDLE/bin/lizard-cli --out RESULTS
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = os.path.join(ROOT, "tests", "linearize", "data", "val_sample_ids.txt")


def generate(cli, model, prompt, backend):
    out = subprocess.run([cli, "generate", "--model", model, "--backend", backend,
                          "--tokens", ",".join(map(str, prompt)), "--max-new-tokens", "64"],
                         check=True, capture_output=True, text=True).stdout
    return [int(x) for x in out.split("\n")[0].split()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cli", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    with open(IDS) as f:
        docs = [[int(x) for x in line.split()] for line in f]
    results = {}
    for name in ("llama-demo", "lizard-demo"):
        model = os.path.join(ROOT, "models", name)
        bos = json.load(open(os.path.join(model, "config.json")))["bos_token_id"]
        prompts = [[bos] + d[:12] for d in docs] + [[bos] + max(docs, key=len)[200:220]]
        rows = []
        for prompt in prompts[:8]:
            cuda, cpu = generate(a.cli, model, prompt, "cuda"), generate(a.cli, model, prompt, "cpu")
            row = {"equal": cuda == cpu}
            if cuda != cpu:
                j = next((i for i, (x, y) in enumerate(zip(cuda, cpu)) if x != y), None)
                row["first_difference"] = j
                if j is not None:
                    with tempfile.TemporaryDirectory() as tmp:
                        path = os.path.join(tmp, "l.npy")
                        subprocess.run([a.cli, "logits", "--model", model, "--backend", "cpu",
                                        "--tokens", ",".join(map(str, prompt + cpu[:j])),
                                        "--out", path], check=True, capture_output=True)
                        last = np.load(path)[-1].astype(np.float64)
                    logp = last - np.log(np.exp(last - last.max()).sum()) - last.max()
                    row["cpu_logprob_gap"] = float(logp[cpu[j]] - logp[cuda[j]])
            rows.append(row)
        results[name] = rows
        print(name, rows, flush=True)
    drift = subprocess.run([a.cli, "drift", "--model", os.path.join(ROOT, "models", "lizard-demo"),
                            "--backend", "cuda", "--tokens", "10240", "--report-every", "1024"],
                           capture_output=True, text=True)
    results["drift_lizard_demo_cuda"] = drift.stdout + drift.stderr
    print(drift.stdout, drift.stderr, flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
