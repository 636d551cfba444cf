#!/usr/bin/python3
"""Self-checks of the Python reference (lizard_ref.py) and the checkpoint tools.

  /usr/bin/python3 tests/reference/test_reference.py      (exits non-zero on failure)

1. The recurrent Lizard layer equals a parallel quadratic form of the same math (gated linear
   attention as a masked decay matrix, window attention as a banded mask with sinks).
2. Whole-model logits of every preset equal a second, sequence-parallel HF-Llama-style forward
   (softmax layers as masked causal attention with batched rotate_half RoPE).
3. make_model.py is deterministic; every dtype and a sharded checkpoint read back exactly;
   models/lizard-tiny is exactly what make_model.py regenerates; make_bad_checkpoints.py writes
   every case.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import lizard_ref  # noqa: E402
import make_model  # noqa: E402

DT = torch.float64
TOKENS = [5, 17, 3, 42, 9, 77, 1, 0, 63, 8, 21, 34, 55, 89, 44, 33, 2, 95, 12, 60]  # 20 tokens
REL_TOL = 1e-10


def rel_err(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


# ----------------------------------------------------------------------------- second formulation

def inv_freq_hf(config, head_dim):
    """Inverse frequencies as transformers computes them (vectorised llama3 rule)."""
    base = lizard_ref.field(config, "rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=DT) / head_dim))
    scaling = config.get("rope_scaling")
    if not scaling:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    out = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return torch.where(medium, smoothed, out)


def apply_rope(x, inv_freq):
    """x [T, heads, D] rotated to positions 0..T-1 (HF apply_rotary_pos_emb)."""
    t = x.shape[0]
    freqs = torch.outer(torch.arange(t, dtype=DT), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def expand_kv(x, num_heads):
    """[T, Hkv, D] -> [T, H, D] (repeat_kv)."""
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)


def softmax_attention_parallel(q, k, v, inv_freq):
    """Causal attention over the whole sequence; q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]."""
    t, h, d = q.shape
    qr = apply_rope(q, inv_freq).transpose(0, 1)                  # [H, T, D]
    kr = expand_kv(apply_rope(k, inv_freq), h).transpose(0, 1)
    vv = expand_kv(v, h).transpose(0, 1)
    scores = qr @ kr.transpose(1, 2) / math.sqrt(d)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ vv).transpose(0, 1)


def phi_parallel(x, weight, bias):
    """x [T, H, D], weight [H, D, F], bias [H, F] -> [T, H, 2F]."""
    a = torch.einsum("thd,hdf->thf", x, weight) + bias
    return torch.cat([torch.softmax(a, -1), torch.softmax(-a, -1)], dim=-1)


def lizard_attention_parallel(q, k, v, gamma, p, window, window_rope, gla_normalize, inv_freq):
    """Quadratic form of Lizard attention; q [T, H, D], k/v [T, Hkv, D], gamma [T, H]."""
    t, h, d = q.shape
    kh, vh = expand_kv(k, h), expand_kv(v, h)
    # Gated linear attention: A[t, s] = (fq_t . fk_s) * prod_{r=s+1..t} gamma_r for s <= t.
    fq = phi_parallel(q, p["fmap_q"], p["fmap_q_bias"])
    fk = phi_parallel(kh, p["fmap_k"], p["fmap_k_bias"])
    logcum = torch.cumsum(torch.log(gamma), dim=0)                # [T, H]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))[:, :, None]
    log_decay = logcum[:, None, :] - logcum[None, :, :]           # [t, s, H]
    decay = torch.where(causal, torch.exp(torch.where(causal, log_decay, 0.0)), 0.0)
    a = torch.einsum("thf,shf->tsh", fq, fk) * decay
    y_gate = torch.einsum("tsh,shd->thd", a, vh)
    if gla_normalize:
        y_gate = y_gate / (a.sum(dim=1)[:, :, None] + 1e-6)
    # Window attention: band s in (t-w, t], meta logits as extra denominator-only columns.
    qa, ka = (apply_rope(q, inv_freq), apply_rope(kh, inv_freq)) if window_rope else (q, kh)
    scores = torch.einsum("thd,shd->hts", qa, ka) / math.sqrt(d)
    pos = torch.arange(t)
    band = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
    scores = scores.masked_fill(~band, float("-inf"))
    meta = p["meta_logits"][:, None, :].expand(h, t, -1)
    probs = torch.softmax(torch.cat([scores, meta], dim=-1), dim=-1)[:, :, :t]
    y_anchor = torch.einsum("hts,shd->thd", probs, vh)
    return y_gate + p["window_factor"][None, :, None] * y_anchor


def parallel_logits(model_dir, tokens):
    """Whole-sequence forward of a checkpoint, layer by layer (HF Llama style)."""
    m = lizard_ref.Model(model_dir)
    w, t = m.w, len(tokens)

    def linear(name, x):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.eps) * weight

    inv_freq = inv_freq_hf(m.config, m.d)
    x = w["model.embed_tokens.weight"][tokens]
    for l in range(m.num_layers):
        a = f"model.layers.{l}.self_attn."
        u = norm(x, w[f"model.layers.{l}.input_layernorm.weight"])
        q = linear(a + "q_proj", u).view(t, m.h, m.d)
        k = linear(a + "k_proj", u).view(t, m.hkv, m.d)
        v = linear(a + "v_proj", u).view(t, m.hkv, m.d)
        if m.layer_types[l] == "softmax":
            y = softmax_attention_parallel(q, k, v, inv_freq)
        else:
            gamma = torch.sigmoid(linear(a + "forget_gate", u))
            lz = m.lizard
            y = lizard_attention_parallel(q, k, v, gamma, m.lizard_params(l), lz["window_size"],
                                          lizard_ref.field(lz, "window_rope", True),
                                          lizard_ref.field(lz, "gla_normalize", True), inv_freq)
        x = x + linear(a + "o_proj", y.reshape(t, -1))
        u2 = norm(x, w[f"model.layers.{l}.post_attention_layernorm.weight"])
        mlp = f"model.layers.{l}.mlp."
        x = x + linear(mlp + "down_proj",
                       torch.nn.functional.silu(linear(mlp + "gate_proj", u2))
                       * linear(mlp + "up_proj", u2))
    return norm(x, w["model.norm.weight"]) @ m.lm_head.T


# ----------------------------------------------------------------------------- tests

class LayerTest(unittest.TestCase):
    """(1) recurrent Lizard layer == parallel quadratic form, on random inputs."""

    def run_case(self, t, h, hkv, d, f, window, m, window_rope, gla_normalize, seed):
        g = torch.Generator().manual_seed(seed)
        randn = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
        q, k, v = randn(t, h, d), randn(t, hkv, d), randn(t, hkv, d)
        gamma = 0.5 + 0.49 * torch.rand(t, h, generator=g, dtype=DT)
        p = {"fmap_q": randn(h, d, f) / math.sqrt(d), "fmap_q_bias": randn(h, f),
             "fmap_k": randn(h, d, f) / math.sqrt(d), "fmap_k_bias": randn(h, f),
             "meta_logits": randn(h, m), "window_factor": 0.5 + torch.rand(h, generator=g,
                                                                           dtype=DT)}
        config = {"rope_theta": 10000.0, "rope_scaling": make_model._LLAMA3_SCALING}
        layer = lizard_ref.LizardAttention(p, h, hkv, d, window, window_rope, gla_normalize,
                                           lizard_ref.rope_inv_freq(config, d))
        recurrent = torch.stack([layer.step(q[i], k[i], v[i], gamma[i], i) for i in range(t)])
        parallel = lizard_attention_parallel(q, k, v, gamma, p, window, window_rope,
                                             gla_normalize, inv_freq_hf(config, d))
        err = rel_err(recurrent, parallel)
        self.assertLess(err, REL_TOL, f"window={window} rope={window_rope} norm={gla_normalize}")

    def test_variants(self):
        seed = 0
        for window in (1, 5, 40):  # smaller than, and larger than, the 24-step sequence
            for window_rope in (True, False):
                for gla_normalize in (True, False):
                    for h, hkv, m in ((4, 4, 3), (4, 2, 0), (6, 2, 4)):
                        seed += 1
                        self.run_case(24, h, hkv, 16, 6, window, m, window_rope, gla_normalize,
                                      seed)

    def test_rope_llama3_matches_hf_rule(self):
        config = {"rope_theta": 10000.0, "rope_scaling": make_model._LLAMA3_SCALING}
        for d in (8, 16, 32):
            ref = torch.tensor(lizard_ref.rope_inv_freq(config, d), dtype=DT)
            self.assertLess(rel_err(ref, inv_freq_hf(config, d)), 1e-14)
        # The presets' scaling exercises all three branches of the rule (keep, divide, smooth).
        plain = inv_freq_hf({"rope_theta": 10000.0}, 16)
        ratio = inv_freq_hf(config, 16) / plain
        self.assertTrue(torch.any(ratio == 1.0) and torch.any(ratio == 0.25)
                        and torch.any((ratio > 0.25) & (ratio < 1.0)))


class ModelTest(unittest.TestCase):
    """(2) every preset's reference logits == the sequence-parallel forward."""

    def test_presets(self):
        with tempfile.TemporaryDirectory() as tmp:
            for preset in make_model.PRESETS:
                if preset == "lizard-tiny":
                    continue  # same code paths as tiny-basic, only larger
                with self.subTest(preset=preset):
                    d = os.path.join(tmp, preset)
                    make_model.make_model(d, preset, seed=3)
                    tokens = [t % make_model.make_config(preset)["vocab_size"] for t in TOKENS]
                    ref = lizard_ref.reference_logits(d, tokens)
                    self.assertEqual(ref.shape, (len(tokens), lizard_ref.Model(d).lm_head.shape[0]))
                    self.assertEqual(ref.dtype, np.float64)
                    self.assertLess(rel_err(ref, parallel_logits(d, tokens)), REL_TOL)
                    # O(1) activations: logits are neither vanishing nor exploding.
                    self.assertTrue(0.3 < ref.std() < 10, f"logit std {ref.std()}")

    def test_cli(self):
        with tempfile.TemporaryDirectory() as tmp:
            make_model.make_model(tmp, "tiny-basic", seed=1)
            out = os.path.join(tmp, "logits.npy")
            subprocess.run([sys.executable, os.path.join(HERE, "lizard_ref.py"), "--model", tmp,
                            "--tokens", "1,2,3", "--out", out], check=True)
            logits = np.load(out)
            self.assertEqual(logits.dtype, np.float64)
            np.testing.assert_array_equal(logits, lizard_ref.reference_logits(tmp, [1, 2, 3]))


class CheckpointTest(unittest.TestCase):
    """(3) make_model.py determinism, dtype and shard round trips, bad checkpoints."""

    def run_tool(self, *args):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", args[0]), *args[1:]],
                       check=True)

    def read_bytes(self, d):
        files = {}
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                files[name] = f.read()
        return files

    def test_deterministic(self):
        with tempfile.TemporaryDirectory() as tmp:
            a, b, c = (os.path.join(tmp, x) for x in "abc")
            self.run_tool("make_model.py", "--out", a, "--preset", "tiny-bias", "--seed", "5")
            self.run_tool("make_model.py", "--out", b, "--preset", "tiny-bias", "--seed", "5")
            self.run_tool("make_model.py", "--out", c, "--preset", "tiny-bias", "--seed", "6")
            self.assertEqual(self.read_bytes(a), self.read_bytes(b))
            self.assertNotEqual(self.read_bytes(a)["model.safetensors"],
                                self.read_bytes(c)["model.safetensors"])

    def test_dtype_round_trip(self):
        preset, seed = "tiny-hybrid", 9
        config = make_model.make_config(preset)
        # float64 source values, rounded by torch (independently of make_model's bit tricks).
        source = {name: torch.from_numpy(make_model._init_tensor(name, shape, init, seed))
                  for name, shape, init in make_model.tensor_specs(config, preset)}
        torch_dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
        with tempfile.TemporaryDirectory() as tmp:
            logits = {}
            for dtype, st_dtype in (("f32", "F32"), ("f16", "F16"), ("bf16", "BF16")):
                d = os.path.join(tmp, dtype)
                self.run_tool("make_model.py", "--out", d, "--preset", preset,
                              "--seed", str(seed), "--dtype", dtype)
                with open(os.path.join(d, "config.json")) as f:
                    self.assertEqual(json.load(f)["torch_dtype"],
                                     make_model.DTYPES[dtype][1])
                tensors = lizard_ref.read_safetensors(os.path.join(d, "model.safetensors"))
                self.assertEqual(set(tensors), set(source))
                for name, (stored_dtype, array) in tensors.items():
                    self.assertEqual(stored_dtype, st_dtype)
                    expect = source[name].to(torch.float32).to(torch_dtypes[dtype]).to(DT)
                    self.assertTrue(torch.equal(torch.from_numpy(array), expect), name)
                self.check_layout(os.path.join(d, "model.safetensors"))
                logits[dtype] = lizard_ref.reference_logits(d, TOKENS[:8])
            # Rounding the weights moves the logits only a little.
            self.assertLess(rel_err(logits["f16"], logits["f32"]), 1e-2)
            self.assertLess(rel_err(logits["bf16"], logits["f32"]), 5e-2)

    def check_layout(self, path):
        """8-byte aligned header; tensors packed back to back in header order."""
        with open(path, "rb") as f:
            blob = f.read()
        n = int.from_bytes(blob[:8], "little")
        self.assertEqual(n % 8, 0)
        header = json.loads(blob[8:8 + n])
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            self.assertEqual(info["data_offsets"][0], end)
            end = info["data_offsets"][1]
        self.assertEqual(8 + n + end, len(blob))

    def test_shards(self):
        with tempfile.TemporaryDirectory() as tmp:
            single, sharded = os.path.join(tmp, "single"), os.path.join(tmp, "sharded")
            self.run_tool("make_model.py", "--out", single, "--preset", "tiny-llama3",
                          "--seed", "2", "--dtype", "bf16")
            self.run_tool("make_model.py", "--out", sharded, "--preset", "tiny-llama3",
                          "--seed", "2", "--dtype", "bf16", "--shards", "3")
            names = sorted(os.listdir(sharded))
            self.assertEqual(names, ["config.json", "model-00001-of-00003.safetensors",
                                     "model-00002-of-00003.safetensors",
                                     "model-00003-of-00003.safetensors",
                                     "model.safetensors.index.json"])
            with open(os.path.join(sharded, "model.safetensors.index.json")) as f:
                index = json.load(f)
            _, whole = lizard_ref.read_checkpoint(single)
            _, parts = lizard_ref.read_checkpoint(sharded)
            self.assertEqual(set(index["weight_map"]), set(whole))
            self.assertEqual(set(parts), set(whole))
            for name in whole:
                self.assertTrue(torch.equal(whole[name], parts[name]), name)
            total = 0
            for shard in set(index["weight_map"].values()):
                self.check_layout(os.path.join(sharded, shard))
                total += sum(int(np.prod(a.shape)) * 2 for _, a in lizard_ref.read_safetensors(
                    os.path.join(sharded, shard)).values())
            self.assertEqual(index["metadata"]["total_size"], total)

    def test_shipped_model_is_regenerable(self):
        shipped = os.path.join(ROOT, "models", "lizard-tiny")
        with tempfile.TemporaryDirectory() as tmp:
            self.run_tool("make_model.py", "--out", tmp, "--preset", "lizard-tiny",
                          "--seed", "1234", "--dtype", "f32")
            fresh = self.read_bytes(tmp)
            for name in ("config.json", "model.safetensors"):
                with open(os.path.join(shipped, name), "rb") as f:
                    self.assertEqual(f.read(), fresh[name], name)

    def test_vocab_override(self):
        config = make_model.make_config("lizard-tiny", vocab=1000)
        self.assertEqual((config["vocab_size"], config["bos_token_id"], config["eos_token_id"]),
                         (1000, 998, 999))

    def test_bad_checkpoints(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.run_tool("make_bad_checkpoints.py", "--out", tmp)
            with open(os.path.join(tmp, "cases.json")) as f:
                cases = json.load(f)
            self.assertGreaterEqual(len(cases), 15)
            for case, substring in cases.items():
                self.assertTrue(os.path.isdir(os.path.join(tmp, case)), case)
                self.assertTrue(substring, case)


if __name__ == "__main__":
    unittest.main()
