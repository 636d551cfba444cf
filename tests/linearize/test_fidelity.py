#!/usr/bin/python3
"""The engine serves the shipped trained models as PyTorch computes them (CPU backend):
perplexity from `lizard-cli logits` on validation text equals the PyTorch model's within 1e-3
relative, and `lizard-cli generate` (greedy) gives PyTorch's greedy tokens for 64 tokens on 8
prompts, for models/llama-demo and models/lizard-demo; so does `lizard-server`, with the 8
prompts sent at once (they share engine steps). Token ids come from data/val_sample_ids.txt (the
Hugging Face tokenizer's)."""
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(ROOT, "tools", "linearize"), os.path.join(ROOT, "tools"),
                os.path.join(ROOT, "clients", "python"), os.path.join(ROOT, "tests", "server")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import model as lm  # noqa: E402
import server_testing  # noqa: E402
from lizard_client import Client  # noqa: E402

CLI = os.environ["LIZARD_CLI"]
SERVER = os.environ["LIZARD_SERVER"]
PPL_TOKENS = 1024
GREEDY_TOKENS = 64


def nll(logits, tokens):
    logits = torch.as_tensor(logits, dtype=torch.float64)
    return torch.nn.functional.cross_entropy(logits[:-1], torch.as_tensor(tokens[1:])).item()


def torch_greedy_agrees(net, prompt, generated):
    """Index of the first engine token that is not PyTorch's greedy choice, or None. One
    forward pass over prompt + generated checks every step: PyTorch's greedy run produces the
    same tokens exactly when each one is the argmax after its prefix."""
    with torch.no_grad():
        logits = net(torch.tensor([prompt + generated[:-1]]))[0, len(prompt) - 1:]
    choice = logits.argmax(-1).tolist()
    return next((i for i, (a, b) in enumerate(zip(choice, generated)) if a != b), None)


def main():
    with open(os.path.join(HERE, "data", "val_sample_ids.txt")) as f:
        docs = [[int(x) for x in line.split()] for line in f]
    failures = checks = 0
    for name in ("llama-demo", "lizard-demo"):
        folder = os.path.join(ROOT, "models", name)
        net = lm.load(folder)
        net.set_gla("plain", torch.float32)
        net.eval()
        bos, eos = net.config["bos_token_id"], net.config["eos_token_id"]
        stream = [t for d in docs for t in [bos] + d + [eos]][:PPL_TOKENS]
        with torch.no_grad():
            ppl_torch = np.exp(nll(net(torch.tensor([stream]))[0], stream))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "logits.npy")
            subprocess.run([CLI, "logits", "--model", folder, "--backend", "cpu",
                            "--tokens", ",".join(map(str, stream)), "--out", out],
                           check=True, capture_output=True)
            ppl_engine = np.exp(nll(np.load(out), stream))
        rel = abs(ppl_engine / ppl_torch - 1)
        checks += 1
        ok = rel < 1e-3
        failures += not ok
        print(f"{name}: perplexity over {len(stream)} tokens: engine {ppl_engine:.5f}, "
              f"PyTorch {ppl_torch:.5f}, relative difference {rel:.2e} {'ok' if ok else 'FAIL'}")
        # 8 prompts: the first 12 tokens of each document, and a later stretch of the longest.
        prompts = [[bos] + d[:12] for d in docs] + [[bos] + max(docs, key=len)[200:220]]
        cli_tokens = []
        for i, prompt in enumerate(prompts[:8]):
            out = subprocess.run([CLI, "generate", "--model", folder, "--backend", "cpu",
                                  "--tokens", ",".join(map(str, prompt)),
                                  "--max-new-tokens", str(GREEDY_TOKENS)],
                                 check=True, capture_output=True, text=True).stdout
            got = [int(x) for x in out.split("\n")[0].split()]
            cli_tokens.append(got)
            checks += 1
            first = torch_greedy_agrees(net, prompt, got)
            # Fewer than 64 tokens only when the engine stopped at EOS.
            if first is not None or (len(got) < GREEDY_TOKENS and got[-1] != eos):
                failures += 1
                print(f"{name}: prompt {i}: engine token {first} of {len(got)} is not "
                      f"PyTorch's greedy choice")
        print(f"{name}: greedy {GREEDY_TOKENS} tokens on 8 prompts checked")
        # The same 8 prompts through lizard-server at once.
        server = server_testing.Server(SERVER, folder, "--backend", "cpu")
        try:
            with Client(server.address) as client, ThreadPoolExecutor(8) as pool:
                served = list(pool.map(lambda p: [t for r in client.generate(
                    token_ids=p, max_new_tokens=GREEDY_TOKENS, timeout=120)
                    for t in r.token_ids], prompts[:8]))
        finally:
            server.close()
        for i, (got, expected) in enumerate(zip(served, cli_tokens)):
            checks += 1
            if got != expected:
                failures += 1
                print(f"{name}: prompt {i}: lizard-server's greedy tokens differ from "
                      f"lizard-cli's (and so from PyTorch's)")
        print(f"{name}: lizard-server: 8 concurrent greedy generations checked")
    print(f"{checks - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
