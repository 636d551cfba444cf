#!/usr/bin/python3
"""Independent float64 reference of a Lizard (or plain Llama) checkpoint's logits.

Written straight from the spec (/work/shared/spec/lizard-model.md, docs/model-format.md) as the
simplest token-by-token recurrence: a loop over positions, each layer keeping its own state. It
is slow and meant for tiny test models only. Usage:

  /usr/bin/python3 tests/reference/lizard_ref.py --model DIR --tokens 1,2,3 --out FILE.npy

writes float64 logits [T, V]. As a module: reference_logits(model_dir, tokens) -> np.ndarray.
"""
import argparse
import json
import math
import os
import struct

import numpy as np
import torch

DT = torch.float64


# ----------------------------------------------------------------------------- checkpoint reading

def _decode(dtype, raw, shape):
    """float64 numpy array from little-endian safetensors bytes."""
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2")
    elif dtype == "BF16":
        # bfloat16 is the upper half of a float32.
        a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        raise ValueError(f"unsupported dtype {dtype}")
    return a.astype(np.float64).reshape(shape)


def read_safetensors(path):
    """{name: (dtype, float64 array)} of one safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = blob[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > len(data):
            raise ValueError(f"{path}: {name} runs past the end of the file")
        tensors[name] = (info["dtype"], _decode(info["dtype"], data[begin:end], info["shape"]))
    return tensors


def read_checkpoint(model_dir):
    """(config dict, {name: float64 torch tensor}) of a single-file or sharded checkpoint."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        for tensor, (_, array) in read_safetensors(os.path.join(model_dir, name)).items():
            weights[tensor] = torch.from_numpy(array)
    return config, weights


# ----------------------------------------------------------------------------- math pieces

def field(obj, key, default):
    """obj[key], or default when the key is absent or null (as the engine reads config.json)."""
    value = obj.get(key)
    return default if value is None else value


def rmsnorm(x, weight, eps):
    return x / torch.sqrt(torch.mean(x * x) + eps) * weight


def rope_inv_freq(config, head_dim):
    """HF Llama inverse frequencies, with the llama3 rope_scaling rule when present."""
    theta = field(config, "rope_theta", 10000.0)
    inv_freq = [theta ** (-2.0 * i / head_dim) for i in range(head_dim // 2)]
    scaling = config.get("rope_scaling")
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"unsupported rope_scaling {kind}")
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    scaled = []
    for f in inv_freq:
        wavelen = 2 * math.pi / f
        if wavelen < old_len / high:        # high frequency: unchanged
            scaled.append(f)
        elif wavelen > old_len / low:       # low frequency: divided by factor
            scaled.append(f / factor)
        else:                               # in between: interpolate
            smooth = (old_len / wavelen - low) / (high - low)
            scaled.append((1 - smooth) * f / factor + smooth * f)
    return scaled


def rope(x, pos, inv_freq):
    """Rotates one head vector x [D] to position pos (HF rotate_half: i pairs with i + D/2)."""
    half = x.shape[-1] // 2
    angles = torch.tensor([pos * f for f in inv_freq], dtype=DT)
    cos = torch.cat([torch.cos(angles), torch.cos(angles)])
    sin = torch.cat([torch.sin(angles), torch.sin(angles)])
    rotated = torch.cat([-x[half:], x[:half]])
    return x * cos + rotated * sin


def feature_map(x, weight, bias):
    """phi(x) = [softmax(xW + b), softmax(-(xW + b))] over the F features; x [D], W [D, F]."""
    a = x @ weight + bias
    return torch.cat([torch.softmax(a, dim=0), torch.softmax(-a, dim=0)])


# ----------------------------------------------------------------------------- attention layers

class SoftmaxAttention:
    """Causal softmax attention with RoPE, keeping every past key and value."""

    def __init__(self, num_heads, num_kv_heads, head_dim, inv_freq):
        self.h, self.hkv, self.d = num_heads, num_kv_heads, head_dim
        self.inv_freq = inv_freq
        self.keys, self.values = [], []  # per position: [Hkv, D]

    def step(self, q, k, v, pos):
        """q [H, D], k/v [Hkv, D] of position pos -> y [H, D]."""
        self.keys.append(torch.stack([rope(k[g], pos, self.inv_freq) for g in range(self.hkv)]))
        self.values.append(v)
        group = self.h // self.hkv
        y = torch.zeros(self.h, self.d, dtype=DT)
        for h in range(self.h):
            g = h // group
            qh = rope(q[h], pos, self.inv_freq)
            scores = torch.stack([qh @ kj[g] for kj in self.keys]) / math.sqrt(self.d)
            probs = torch.softmax(scores, dim=0)
            y[h] = sum(p * vj[g] for p, vj in zip(probs, self.values))
        return y


class LizardAttention:
    """Gated linear attention (state S, z) + anchor window attention with meta-memory sinks.

    params: dict of per-layer tensors fmap_q [H, D, F], fmap_q_bias [H, F], fmap_k, fmap_k_bias,
    meta_logits [H, m], window_factor [H]. The gate value gamma [H] comes from the caller.
    """

    def __init__(self, params, num_heads, num_kv_heads, head_dim, window, window_rope,
                 gla_normalize, inv_freq):
        self.p = params
        self.h, self.hkv, self.d = num_heads, num_kv_heads, head_dim
        self.window, self.window_rope, self.gla_normalize = window, window_rope, gla_normalize
        self.inv_freq = inv_freq
        two_f = 2 * params["fmap_q"].shape[-1]
        self.S = torch.zeros(num_heads, two_f, head_dim, dtype=DT)
        self.z = torch.zeros(num_heads, two_f, dtype=DT)
        self.keys, self.values = [], []  # per position: [Hkv, D] (keys after RoPE if window_rope)

    def step(self, q, k, v, gamma, pos):
        """q [H, D], raw k/v [Hkv, D], gamma [H] of position pos -> y [H, D]."""
        if self.window_rope:
            self.keys.append(torch.stack([rope(k[g], pos, self.inv_freq) for g in range(self.hkv)]))
        else:
            self.keys.append(k)
        self.values.append(v)
        window = range(max(0, pos - self.window + 1), pos + 1)
        group = self.h // self.hkv
        p = self.p
        y = torch.zeros(self.h, self.d, dtype=DT)
        for h in range(self.h):
            g = h // group
            # Gated linear attention on the raw (RoPE-free) q and k.
            fq = feature_map(q[h], p["fmap_q"][h], p["fmap_q_bias"][h])
            fk = feature_map(k[g], p["fmap_k"][h], p["fmap_k_bias"][h])
            self.S[h] = gamma[h] * self.S[h] + torch.outer(fk, v[g])
            self.z[h] = gamma[h] * self.z[h] + fk
            y_gate = fq @ self.S[h]
            if self.gla_normalize:
                y_gate = y_gate / (fq @ self.z[h] + 1e-6)
            # Window attention over the last w positions; meta logits only add to the denominator.
            qa = rope(q[h], pos, self.inv_freq) if self.window_rope else q[h]
            scores = torch.stack([qa @ self.keys[j][g] for j in window]) / math.sqrt(self.d)
            meta = p["meta_logits"][h]  # m may be 0
            top = torch.max(torch.cat([scores, meta]))
            e = torch.exp(scores - top)
            denom = torch.sum(e) + torch.sum(torch.exp(meta - top))
            y_anchor = sum(e[i] * self.values[j][g] for i, j in enumerate(window))
            y[h] = y_gate + p["window_factor"][h] * y_anchor / denom
        return y


# ----------------------------------------------------------------------------- the model

class Model:
    def __init__(self, model_dir):
        config, w = read_checkpoint(model_dir)
        self.config, self.w = config, w
        self.hidden = config["hidden_size"]
        self.h = config["num_attention_heads"]
        self.hkv = field(config, "num_key_value_heads", self.h)
        self.d = field(config, "head_dim", self.hidden // self.h)
        self.eps = field(config, "rms_norm_eps", 1e-5)
        self.num_layers = config["num_hidden_layers"]
        self.lizard = config.get("lizard")
        if self.lizard is None:
            self.layer_types = ["softmax"] * self.num_layers
        else:
            self.layer_types = field(self.lizard, "layer_types", ["lizard"] * self.num_layers)
        self.inv_freq = rope_inv_freq(config, self.d)
        tied = field(config, "tie_word_embeddings", False)
        self.lm_head = w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]

    def _get(self, name, default_shape=None):
        """A tensor, or zeros of default_shape when the checkpoint omits it (optional bias)."""
        if name in self.w:
            return self.w[name]
        if default_shape is None:
            raise KeyError(name)
        return torch.zeros(default_shape, dtype=DT)

    def lizard_params(self, layer):
        a = f"model.layers.{layer}.self_attn."
        f = self.lizard["feature_dim"]
        return {
            "fmap_q": self._get(a + "feature_map_q.weight"),
            "fmap_q_bias": self._get(a + "feature_map_q.bias", [self.h, f]),
            "fmap_k": self._get(a + "feature_map_k.weight"),
            "fmap_k_bias": self._get(a + "feature_map_k.bias", [self.h, f]),
            "meta_logits": self._get(a + "meta_logits"),
            "window_factor": self._get(a + "window_factor"),
        }

    def new_attention(self, layer):
        if self.layer_types[layer] == "softmax":
            return SoftmaxAttention(self.h, self.hkv, self.d, self.inv_freq)
        lz = self.lizard
        return LizardAttention(self.lizard_params(layer), self.h, self.hkv, self.d,
                               lz["window_size"], field(lz, "window_rope", True),
                               field(lz, "gla_normalize", True), self.inv_freq)

    def linear(self, name, x, out_dim):
        return self._get(name + ".weight") @ x + self._get(name + ".bias", [out_dim])

    def logits(self, tokens):
        attention = [self.new_attention(l) for l in range(self.num_layers)]
        out = []
        for pos, token in enumerate(tokens):
            x = self.w["model.embed_tokens.weight"][token].clone()
            for l in range(self.num_layers):
                p = f"model.layers.{l}."
                a = p + "self_attn."
                u = rmsnorm(x, self.w[p + "input_layernorm.weight"], self.eps)
                q = self.linear(a + "q_proj", u, self.h * self.d).reshape(self.h, self.d)
                k = self.linear(a + "k_proj", u, self.hkv * self.d).reshape(self.hkv, self.d)
                v = self.linear(a + "v_proj", u, self.hkv * self.d).reshape(self.hkv, self.d)
                if self.layer_types[l] == "softmax":
                    y = attention[l].step(q, k, v, pos)
                else:
                    gate = self.w[a + "forget_gate.weight"] @ u \
                        + self._get(a + "forget_gate.bias", [self.h])
                    y = attention[l].step(q, k, v, torch.sigmoid(gate), pos)
                x = x + self.linear(a + "o_proj", y.reshape(-1), self.hidden)
                u2 = rmsnorm(x, self.w[p + "post_attention_layernorm.weight"], self.eps)
                gate_act = torch.nn.functional.silu(self.w[p + "mlp.gate_proj.weight"] @ u2)
                up = self.w[p + "mlp.up_proj.weight"] @ u2
                x = x + self.w[p + "mlp.down_proj.weight"] @ (gate_act * up)
            out.append(self.lm_head @ rmsnorm(x, self.w["model.norm.weight"], self.eps))
        return torch.stack(out).numpy()


def reference_logits(model_dir, tokens):
    """float64 logits [T, V] of the token ids `tokens` fed from position 0."""
    return Model(model_dir).logits(list(tokens))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--out", required=True, help="output .npy (float64 [T, V])")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    np.save(args.out, reference_logits(args.model, tokens))


if __name__ == "__main__":
    main()
