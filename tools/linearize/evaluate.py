#!/usr/bin/python3
"""Stage eval: held-out perplexity by context length, passkey retrieval by distance, multi-query
associative recall, greedy samples and state/KV bytes per token, for one or more models.

The GLA runs in the plain chunked fp32 form (the recurrence's numbers). Perplexity runs under
bf16 autocast on CUDA (as the training stages measure it; fp32 on the CPU), the probes and the
samples in fp32. Perplexity: the mean next-token loss over consecutive windows of
the validation stream at each context length (--contexts, in multiples of --seq). Passkey: the
Landmark-attention prompt (recall.py) with the key at a given token distance before the
question; a trial counts when every key token is the greedy choice. MQAR: lists of word-number
pairs, then some words again; accuracy of the greedy number token. --gla-bench times the GLA
forms on the GPU and measures the folded bf16 form's error against the plain fp32 one.
Writes --out (JSON) and prints a Markdown summary.

  python3 tools/linearize/evaluate.py --model teacher=models/llama-demo \
      --model lizard=models/lizard-demo --data work/tok --out work/eval.json
"""
import math
import os
import random
import time

import common
import model as lm
import numpy as np
import recall
import tokenizer as tok_stage
import torch
import torch.nn.functional as F

STAGE = "eval"


class Text:
    """Encoding and decoding with a tokenizer.json (Hugging Face tokenizers or pure Python)."""

    def __init__(self, path):
        self.encode_batch, self.bos, self.eos = tok_stage.encoder(path)
        spec = common.read_json(path)
        inverse = {i: t for t, i in spec["model"]["vocab"].items()}
        inverse.update({t["id"]: t["content"] for t in spec["added_tokens"]})
        import make_tokenizer
        to_byte = {c: b for b, c in make_tokenizer.bytes_to_unicode().items()}
        self.decode = lambda ids: bytes(to_byte[c] for i in ids if i not in (self.bos, self.eos)
                                        for c in inverse[i]).decode("utf-8", "replace")

    def encode(self, text):
        return self.encode_batch([text])[0]


def perplexity(net, tokens, seq, windows, dev):
    loss = common.evaluate_loss(net, tokens, seq, windows, dev, batch=max(1, 8192 // seq))
    return math.exp(loss), loss


def greedy_tokens(net, prompt, steps, dev):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = net(torch.tensor([ids], device=dev))[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def passkey(net, text, distances, trials, dev, seed):
    """{distance: accuracy}; distance = tokens from the key's first token to the answer."""
    rng = random.Random(seed)
    filler_tokens = len(text.encode(" " + recall.FILLER))
    results = {}
    for d in distances:
        hits, measured = 0, []
        for _ in range(trials):
            after = max(0, round((d - 40) / filler_tokens))
            prompt, key = recall.passkey_text(rng, rng.randint(0, 3), after)
            p_ids = [text.bos] + text.encode(prompt)
            full = [text.bos] + text.encode(f"{prompt} {key}.")
            answer = full[len(p_ids):-1]
            assert full[:len(p_ids)] == p_ids
            needle_text = prompt[:prompt.index(f"is {key}.") + 3]
            distance = len(p_ids) - len(text.encode(needle_text)) - 1
            measured.append(distance)
            with torch.no_grad():
                logits = net(torch.tensor([full[:-1]], device=dev))[0]
            pred = logits[len(p_ids) - 1:len(p_ids) - 1 + len(answer)].argmax(-1).tolist()
            hits += pred == answer
        results[d] = {"accuracy": hits / trials, "mean_distance": float(np.mean(measured))}
    return results


def mqar(net, text, pair_counts, trials, dev, seed):
    """{pairs: accuracy of the recalled number tokens}."""
    rng = random.Random(seed)
    results = {}
    for n in pair_counts:
        right = total = 0
        for _ in range(trials):
            body, asked = recall.mqar_text(rng, n, n)
            ids = [text.bos] + text.encode(body)
            # Value tokens of the recall part: the numbers after "Recall:", in order.
            start = len([text.bos] + text.encode(body[:body.index(" Recall:")]))
            wanted = [text.encode(v)[0] for _, v in asked]
            positions, j = [], start
            for v in wanted:
                while ids[j] != v:
                    j += 1
                positions.append(j)
                j += 1
            with torch.no_grad():
                logits = net(torch.tensor([ids], device=dev))[0]
            pred = logits[[p - 1 for p in positions]].argmax(-1).tolist()
            right += sum(int(a == b) for a, b in zip(pred, wanted))
            total += len(wanted)
        results[n] = right / total
    return results


def memory_bytes(config):
    """(state bytes per sequence, KV bytes per token), everything float32 as the engine keeps it
    by default: S and z plus the window's keys and values per Lizard layer, keys and values per
    token per softmax layer (`lizard-cli info` adds a few bytes of bookkeeping)."""
    s = lm.Shape(config)
    per_token = state = 0
    for kind in s.layer_types:
        if kind == "softmax":
            per_token += 2 * s.kv_heads * s.head_dim * 4
        else:
            lz = config["lizard"]
            f2 = 2 * lz["feature_dim"]
            state += s.heads * (f2 * s.head_dim + f2) * 4
            state += 2 * s.kv_heads * lz["window_size"] * s.head_dim * 4
    return state, per_token


def gla_bench(dev):
    """Speed of the GLA forms and the folded bf16 form's error against plain fp32."""
    import lizard_attention as la
    torch.manual_seed(0)
    b, h, t, d, f = 8, 16, 4096, 64, 64
    x = torch.randn(b, h, t, d, device=dev)
    w = torch.randn(h, d, f, device=dev) / math.sqrt(d)
    bias = torch.zeros(h, f, device=dev)
    lq, lk = la.log_feature_map(x, w, bias), la.log_feature_map(x.flip(2), w, bias)
    v = torch.randn(b, h, t, d, device=dev)
    log_gate = F.logsigmoid(torch.randn(b, h, t, device=dev) + 3.0)
    out = {"shape": f"B={b} H={h} T={t} D={d} 2F={2 * f}"}
    ref = la.gla_chunked(lq, lk, v, log_gate, True, folded=False, dtype=torch.float32)
    short = la.gla_recurrent(lq[:1, :, :256], lk[:1, :, :256], v[:1, :, :256],
                             log_gate[:1, :, :256], True)[0]
    out["plain_fp32_vs_recurrent_max_abs"] = float((ref[:1, :, :256] - short).abs().max())
    for name, folded, dtype in (("plain fp32", False, torch.float32),
                                ("plain bf16", False, torch.bfloat16),
                                ("folded bf16", True, torch.bfloat16)):
        args = [t_.clone().requires_grad_(True) for t_ in (lq, lk, v)]
        y = la.gla_chunked(*args, log_gate, True, folded=folded, dtype=dtype)
        err = (y - ref).detach().float()
        for _ in range(3):
            la.gla_chunked(*args, log_gate, True, folded=folded, dtype=dtype).sum().backward()
        torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(10):
            la.gla_chunked(*args, log_gate, True, folded=folded, dtype=dtype).sum().backward()
        torch.cuda.synchronize()
        out[name] = {"fwd_bwd_ms": (time.time() - t0) * 100,
                     "rel_err_vs_plain_fp32": float(err.norm() / ref.norm()),
                     "max_abs_err": float(err.abs().max())}
    return out


PROMPTS = ["In the beginning", "The king said unto", "A dictionary is a", "The computer program",
           "Once upon a time", "Water, n.", "The purpose of a package manager is",
           "And it came to pass"]


def main():
    p = common.parser(__doc__)
    p.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable)")
    p.add_argument("--data", required=True, help="tokenizer stage folder (val.npy, tokenizer.json)")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--seq", type=int, default=512, help="the training context")
    p.add_argument("--contexts", default="1,4,16", help="multiples of --seq")
    p.add_argument("--tokens", type=int, default=131072,
                   help="validation tokens per context length (fewer if the split is shorter)")
    p.add_argument("--passkey", default="32,64,100,128,200,400,1000,2000,4000",
                   help="distances in tokens")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--mqar", default="8,16,32,48", help="pair counts")
    p.add_argument("--sample-tokens", type=int, default=48)
    p.add_argument("--gla-bench", action="store_true", help="GPU: GLA form speed and error")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    dev = common.device(a.device)
    text = Text(os.path.join(a.data, "tokenizer.json"))
    val = common.Tokens(os.path.join(a.data, "val.npy"))
    results = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
               "val_tokens": len(val), "models": {}}
    if a.gla_bench and dev == "cuda":
        results["gla_bench"] = gla_bench(dev)
        common.log(STAGE, f"gla bench {results['gla_bench']}")
    for spec in a.model:
        name, folder = spec.split("=", 1)
        t0 = time.time()
        net = lm.load(folder, device=dev)
        net.set_gla("plain", torch.float32)
        net.eval()
        r = {"folder": folder, "ppl": {}}
        for mult in [int(x) for x in a.contexts.split(",")]:
            seq = a.seq * mult
            windows = max(1, min(a.tokens // seq, (len(val) - 1) // seq))
            ppl, loss = perplexity(net, val, seq, windows, dev)
            r["ppl"][seq] = {"ppl": ppl, "loss": loss, "windows": windows}
            common.log(STAGE, f"{name}: ppl {ppl:.3f} at {seq} tokens ({windows} windows)")
        r["passkey"] = passkey(net, text, [int(x) for x in a.passkey.split(",")], a.trials, dev, 1)
        common.log(STAGE, f"{name}: passkey {r['passkey']}")
        r["mqar"] = mqar(net, text, [int(x) for x in a.mqar.split(",")], a.trials, dev, 2)
        common.log(STAGE, f"{name}: mqar {r['mqar']}")
        r["samples"] = {}
        for prompt in PROMPTS:
            ids = greedy_tokens(net, [text.bos] + text.encode(prompt), a.sample_tokens, dev)
            r["samples"][prompt] = text.decode(ids)
        state, per_token = memory_bytes(net.config)
        r["state_bytes_per_sequence"], r["kv_bytes_per_token"] = state, per_token
        r["eval_seconds"] = time.time() - t0
        results["models"][name] = r
        common.write_json(a.out, results)
    lines = ["| model | " + " | ".join(f"ppl @{c}" for c in results["models"][name]["ppl"]) +
             " | state B/seq | KV B/token |", "|---" * (len(r["ppl"]) + 3) + "|"]
    for name, r in results["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v['ppl']:.2f}" for v in r["ppl"].values()) +
                     f" | {r['state_bytes_per_sequence']} | {r['kv_bytes_per_token']} |")
    print("\n".join(lines))
    for name, r in results["models"].items():
        for prompt, sample in r["samples"].items():
            print(f"{name}: {prompt!r} -> {sample!r}")


if __name__ == "__main__":
    main()
