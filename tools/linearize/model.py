"""A Llama/Mistral causal LM in plain PyTorch whose attention layers can become Lizard layers.

Parameter names are Hugging Face LlamaForCausalLM's plus the Lizard ones of
shared/spec/lizard-model.md, so a state_dict is a checkpoint of docs/model-format.md. Any Hugging
Face Llama or Mistral folder loads (config.json + model.safetensors or a sharded index, any
dtype, GQA, head_dim, llama3 rope_scaling, biases, tied or untied embeddings); nothing assumes
the demo's shapes. Mistral's sliding window is not modelled (full causal attention).
Runs on PyTorch 1.13 (Debian, CPU) and 2.x.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import lizard_attention as la

_ST_DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
              "BF16": (np.int16, torch.bfloat16)}


# ----------------------------------------------------------------------------- checkpoint IO

def read_safetensors(path):
    """{name: tensor} of one safetensors file, in its stored dtype."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        np_dtype, torch_dtype = _ST_DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        arr = np.frombuffer(blob, dtype=np_dtype, count=(e - b) // np.dtype(np_dtype).itemsize,
                            offset=base + b).copy()
        t = torch.from_numpy(arr)
        if torch_dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        out[name] = t.reshape(info["shape"])
    return out


def read_checkpoint(folder):
    """(config dict, {name: tensor}) of a single-file or sharded checkpoint folder."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(folder, name)))
    return config, tensors


def write_checkpoint(folder, config, state, dtype):
    """config.json + model.safetensors; dtype "bf16" | "f32"; tensors in state_dict order."""
    os.makedirs(folder, exist_ok=True)
    st = {"bf16": "BF16", "f32": "F32"}[dtype]
    tdt = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    entries = []
    for name, t in state.items():
        t = t.detach().to("cpu", tdt).contiguous()
        raw = (t.view(torch.int16) if tdt == torch.bfloat16 else t).numpy().tobytes()
        entries.append((name, st, list(t.shape), raw))
    config = dict(config, torch_dtype={"bf16": "bfloat16", "f32": "float32"}[dtype])
    # The same writer as the test checkpoints (docs/model-format.md).
    import make_model
    make_model.write_checkpoint(folder, config, entries)


# ----------------------------------------------------------------------------- config

def field(config, key, default):
    value = config.get(key)
    return default if value is None else value


class Shape:
    """The fields of config.json the model uses (defaults as the engine reads them)."""

    def __init__(self, config):
        self.config = config
        self.vocab = config["vocab_size"]
        self.hidden = config["hidden_size"]
        self.inter = config["intermediate_size"]
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = field(config, "num_key_value_heads", self.heads)
        self.head_dim = field(config, "head_dim", self.hidden // self.heads)
        self.eps = field(config, "rms_norm_eps", 1e-5)
        self.tied = field(config, "tie_word_embeddings", False)
        # Which of q, k, v, o have biases: HF Llama's attention_bias (all four) unless the
        # checkpoint says otherwise (Qwen-style q/k/v only), see load().
        self.biases = dict.fromkeys("qkvo", field(config, "attention_bias", False))
        lizard = config.get("lizard")
        self.lizard = lizard
        if lizard is None:
            self.layer_types = ["softmax"] * self.layers
        else:
            self.layer_types = field(lizard, "layer_types", ["lizard"] * self.layers)


def rope_inv_freq(config, head_dim):
    """HF Llama inverse frequencies with the llama3 rope_scaling rule (docs/model-format.md)."""
    theta = field(config, "rope_theta", 10000.0)
    inv = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaling = config.get("rope_scaling")
    kind = None if scaling is None else scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return inv
    if kind != "llama3":
        raise ValueError(f"rope_scaling {kind} is not supported")
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    mid = (1 - smooth) * inv / factor + smooth * inv
    return torch.where(wavelen < old / hi, inv, torch.where(wavelen > old / lo, inv / factor, mid))


def apply_rope(x, inv_freq):
    """x [B,H,T,D] at positions 0..T-1, HF rotate_half convention."""
    t = x.shape[2]
    angles = torch.arange(t, dtype=torch.float64, device=x.device)[:, None] * \
        inv_freq.to(x.device)[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------- modules

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * \
            self.weight.to(x.dtype)


class FeatureMap(nn.Module):
    """Per-head Hedgehog map phi(x) = [softmax(xW + b), softmax(-(xW + b))], W [H, D, F]."""

    def __init__(self, heads, head_dim, feature_dim):
        super().__init__()
        # Identity-like start (Hedgehog): feature i looks at coordinate i of the head.
        w = torch.zeros(heads, head_dim, feature_dim)
        w[:, torch.arange(min(head_dim, feature_dim)), torch.arange(min(head_dim, feature_dim))] = 1
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(heads, feature_dim))

    def forward(self, x):
        return la.log_feature_map(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class LoRA(nn.Module):
    """W x + (alpha / r) B A x, B zero at start; merged into W at export."""

    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, in_dim) / math.sqrt(in_dim))
        self.b = nn.Parameter(torch.zeros(out_dim, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return (x @ self.a.t().to(x.dtype)) @ self.b.t().to(x.dtype) * self.scale

    def delta(self):
        return self.b @ self.a * self.scale


class Attention(nn.Module):
    def __init__(self, shape, kind, inv_freq):
        super().__init__()
        s = shape
        self.shape, self.kind = s, kind
        self.h, self.hkv, self.d = s.heads, s.kv_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden, self.h * self.d, bias=s.biases["q"])
        self.k_proj = nn.Linear(s.hidden, self.hkv * self.d, bias=s.biases["k"])
        self.v_proj = nn.Linear(s.hidden, self.hkv * self.d, bias=s.biases["v"])
        self.o_proj = nn.Linear(self.h * self.d, s.hidden, bias=s.biases["o"])
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.lora = None
        self.gla_form = "folded"           # folded | plain | recurrent
        self.gla_dtype = torch.float32     # matrix-product input type of the chunked forms
        self.chunk = 32
        if kind == "lizard":
            self.add_lizard_modules(s.lizard)

    def add_lizard_modules(self, lizard):
        """The Lizard parameters of one layer, initialised for stage 1."""
        s = self.shape
        f, m = lizard["feature_dim"], lizard["num_meta_tokens"]
        self.kind = "lizard"
        self.window = lizard["window_size"]
        self.window_rope = field(lizard, "window_rope", True)
        self.gla_normalize = field(lizard, "gla_normalize", True)
        self.feature_map_q = FeatureMap(self.h, self.d, f)
        self.feature_map_k = FeatureMap(self.h, self.d, f)
        self.forget_gate = nn.Linear(s.hidden, self.h)
        nn.init.normal_(self.forget_gate.weight, std=0.02 / math.sqrt(s.hidden))
        # gamma = sigmoid(bias) spread over (0.88, 0.998): heads of short and long memory.
        with torch.no_grad():
            self.forget_gate.bias.copy_(torch.linspace(2.0, 6.0, self.h))
        self.meta_logits = nn.Parameter(torch.zeros(self.h, m))
        self.window_factor = nn.Parameter(torch.ones(self.h))

    def lizard_parameters(self):
        return [p for n, p in self.named_parameters()
                if n.split(".")[0] in ("feature_map_q", "feature_map_k", "forget_gate",
                                       "meta_logits", "window_factor")]

    def add_lora(self, rank, alpha):
        s = self.shape
        self.lora = nn.ModuleDict({
            "q": LoRA(s.hidden, self.h * self.d, rank, alpha),
            "k": LoRA(s.hidden, self.hkv * self.d, rank, alpha),
            "v": LoRA(s.hidden, self.hkv * self.d, rank, alpha)})

    def merge_lora(self):
        if self.lora is None:
            return
        with torch.no_grad():
            for key, proj in (("q", self.q_proj), ("k", self.k_proj), ("v", self.v_proj)):
                proj.weight += self.lora[key].delta().to(proj.weight.dtype)
        self.lora = None

    def _project(self, u):
        b, t, _ = u.shape
        q, k, v = self.q_proj(u), self.k_proj(u), self.v_proj(u)
        if self.lora is not None:
            q, k, v = q + self.lora["q"](u), k + self.lora["k"](u), v + self.lora["v"](u)
        q = q.view(b, t, self.h, self.d).transpose(1, 2)
        k = k.view(b, t, self.hkv, self.d).transpose(1, 2)
        v = v.view(b, t, self.hkv, self.d).transpose(1, 2)
        group = self.h // self.hkv
        return q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

    def softmax_core(self, q, k, v):
        q, k = apply_rope(q, self.inv_freq), apply_rope(k, self.inv_freq)
        if hasattr(F, "scaled_dot_product_attention"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        t = q.shape[2]
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.d)
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        probs = torch.softmax(scores.masked_fill(~mask, -math.inf), -1)
        return probs.to(v.dtype) @ v

    def lizard_core(self, u, q, k, v):
        log_gate = F.logsigmoid(self.forget_gate(u).float()).transpose(1, 2)  # [B,H,T]
        lq, lk = self.feature_map_q(q.float()), self.feature_map_k(k.float())
        if self.gla_form == "recurrent":
            y_gate, _ = la.gla_recurrent(lq, lk, v.float(), log_gate, self.gla_normalize)
        else:
            y_gate = la.gla_chunked(lq, lk, v, log_gate, self.gla_normalize, self.chunk,
                                    folded=self.gla_form == "folded", dtype=self.gla_dtype)
        if self.window_rope:
            qa, ka = apply_rope(q, self.inv_freq), apply_rope(k, self.inv_freq)
        else:
            qa, ka = q, k
        y_win = la.window_attention(qa, ka, v, self.meta_logits, self.window)
        return y_gate.to(v.dtype) + self.window_factor.to(v.dtype)[None, :, None, None] * y_win

    def forward(self, u, kind=None):
        """u: the layer's normalised input [B,T,Hd]; kind overrides the layer's own."""
        q, k, v = self._project(u)
        if (kind or self.kind) == "softmax":
            y = self.softmax_core(q, k, v)
        else:
            y = self.lizard_core(u, q, k, v)
        b, _, t, _ = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden, s.inter, bias=False)
        self.up_proj = nn.Linear(s.hidden, s.inter, bias=False)
        self.down_proj = nn.Linear(s.inter, s.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, s, kind, inv_freq):
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden, s.eps)
        self.self_attn = Attention(s, kind, inv_freq)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.eps)
        self.mlp = MLP(s)


class Backbone(nn.Module):
    def __init__(self, s, inv_freq):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab, s.hidden)
        self.layers = nn.ModuleList([Layer(s, kind, inv_freq) for kind in s.layer_types])
        self.norm = RMSNorm(s.hidden, s.eps)


class CausalLM(nn.Module):
    def __init__(self, config, biases=None):
        super().__init__()
        self.config = dict(config)
        self.s = Shape(config)
        if biases is not None:
            self.s.biases = biases
        self.model = Backbone(self.s, rope_inv_freq(config, self.s.head_dim).float())
        self.lm_head = None if self.s.tied else nn.Linear(self.s.hidden, self.s.vocab, bias=False)

    def init_weights(self, seed):
        """Random init for pretraining: N(0, 0.02), output projections scaled by depth."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    continue
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * self.s.layers) \
                        if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)
                elif name.endswith(".bias"):
                    p.zero_()

    def logits(self, hidden):
        h = self.model.norm(hidden)
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return h @ w.t().to(h.dtype)

    def forward(self, tokens, capture=None, kind=None):
        """tokens [B,T] -> logits [B,T,V]. capture: a list that receives, per layer,
        (normalised attention input u, attention output) for stage 1. kind="softmax" runs
        every layer as the teacher's softmax attention."""
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            u = layer.input_layernorm(x)
            a = layer.self_attn(u, kind)
            if capture is not None:
                capture.append((u, a))
            x = x + a
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.logits(x)

    def to_lizard(self, lizard):
        """Gives every layer whose layer_types entry is "lizard" fresh Lizard modules."""
        self.config["lizard"] = dict(lizard)
        biases = self.s.biases
        self.s = Shape(self.config)
        self.s.biases = biases
        for layer, kind in zip(self.model.layers, self.s.layer_types):
            if kind == "lizard":
                layer.self_attn.add_lizard_modules(lizard)
            else:
                layer.self_attn.kind = "softmax"

    def set_gla(self, form, dtype):
        for layer in self.model.layers:
            layer.self_attn.gla_form, layer.self_attn.gla_dtype = form, dtype

    def export_state(self):
        """The state_dict in checkpoint names: LoRA merged, tied lm_head left out."""
        for layer in self.model.layers:
            layer.self_attn.merge_lora()
        return {k: v for k, v in self.state_dict().items() if "lora" not in k}


def load(folder, device="cpu", dtype=torch.float32):
    """A CausalLM from a Hugging Face Llama/Mistral folder or one of our Lizard checkpoints."""
    config, tensors = read_checkpoint(folder)
    biases = {p: f"model.layers.0.self_attn.{p}_proj.bias" in tensors for p in "qkvo"}
    model = CausalLM(config, biases)
    state = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if model.lm_head is None:
        state.pop("lm_head.weight", None)
    own = model.state_dict()
    for name in own:
        if name.endswith(".bias") and name not in state and "self_attn" in name:
            state[name] = torch.zeros_like(own[name])   # optional biases absent: zero
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        raise ValueError(f"{folder}: missing {sorted(missing)[:5]}, unexpected "
                         f"{sorted(unexpected)[:5]}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device=device, dtype=dtype)
