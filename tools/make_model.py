#!/usr/bin/python3
"""Writes a randomly initialised Lizard (or plain Llama) checkpoint: config.json + safetensors.

The checkpoint follows docs/model-format.md. Weights are deterministic for a given preset and
seed, and scaled so activations stay O(1) through the layers (tests compare real signal, not
noise). Usage:

  /usr/bin/python3 tools/make_model.py --out DIR --preset NAME --seed N
      [--dtype f32|f16|bf16] [--shards K] [--vocab V]
  /usr/bin/python3 tools/make_model.py --list-presets

The safetensors writer here is also used by tools/make_bad_checkpoints.py.
"""
import argparse
import copy
import json
import os
import struct
import sys
import zlib

import numpy as np

# Each preset: the config.json fields, the "lizard" object (None for a plain Llama teacher),
# which optional biases exist and whether eos_token_id is a list. Small presets exist for tests;
# each one varies a few features so that together they cover every option of the format.
_LLAMA3_SCALING = {
    # original_max_position_embeddings is small so that, with D = 8..16 and rope_theta 10000,
    # the three branches of the llama3 rule (keep, smooth, divide) all occur.
    "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

PRESETS = {
    # Baseline: GQA ratio 2, no biases, window_rope, window 8 (< a 20-token prompt).
    "tiny-basic": {
        "config": dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8),
        "lizard": dict(feature_dim=4, window_size=8, num_meta_tokens=2, window_rope=True),
        "qkv_bias": False, "o_bias": False, "fmap_bias": False, "gate_bias": False,
    },
    # Every bias present, GQA ratio 3, window_rope off, window 32 (> a 20-token prompt).
    "tiny-bias": {
        "config": dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=3, num_key_value_heads=1, head_dim=16),
        "lizard": dict(feature_dim=8, window_size=32, num_meta_tokens=3, window_rope=False),
        "qkv_bias": True, "o_bias": True, "fmap_bias": True, "gate_bias": True,
    },
    # Hybrid lizard/softmax/lizard, no GQA (ratio 1), tied embeddings, q/k/v biases only
    # (Qwen style), gla_normalize false, window 4.
    "tiny-hybrid": {
        "config": dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=8,
                       tie_word_embeddings=True),
        "lizard": dict(feature_dim=4, window_size=4, num_meta_tokens=2, window_rope=True,
                       layer_types=["lizard", "softmax", "lizard"], gla_normalize=False),
        "qkv_bias": True, "o_bias": False, "fmap_bias": False, "gate_bias": True,
    },
    # llama3 rope_scaling with window_rope, GQA ratio 3, head_dim != hidden/heads, feature-map
    # biases without a gate bias, window 16, eos_token_id a list.
    "tiny-llama3": {
        "config": dict(vocab_size=300, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                       rope_scaling=_LLAMA3_SCALING),
        "lizard": dict(feature_dim=8, window_size=16, num_meta_tokens=4, window_rope=True),
        "qkv_bias": False, "o_bias": False, "fmap_bias": True, "gate_bias": False,
        "eos_list": True,
    },
    # Hybrid softmax/lizard with llama3 scaling on the softmax layer, gla_normalize false,
    # no window_rope, GQA ratio 2.
    "tiny-hybrid-llama3": {
        "config": dict(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       rope_scaling=_LLAMA3_SCALING),
        "lizard": dict(feature_dim=8, window_size=24, num_meta_tokens=2, window_rope=False,
                       layer_types=["softmax", "lizard"], gla_normalize=False),
        "qkv_bias": False, "o_bias": True, "fmap_bias": True, "gate_bias": True,
    },
    # Plain Llama teacher (no "lizard" object: every layer is softmax attention).
    "tiny-teacher": {
        "config": dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2),
        "lizard": None,
        "qkv_bias": False, "o_bias": False, "fmap_bias": False, "gate_bias": False,
    },
    # Plain Llama teacher with llama3 rope_scaling, GQA ratio 3 and q/k/v biases.
    "tiny-teacher-llama3": {
        "config": dict(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2,
                       rope_scaling=_LLAMA3_SCALING),
        "lizard": None,
        "qkv_bias": True, "o_bias": False, "fmap_bias": False, "gate_bias": False,
    },
    # The shipped default model (models/lizard-tiny), see models/lizard-tiny/README.md.
    "lizard-tiny": {
        "config": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       max_position_embeddings=8192),
        "lizard": dict(feature_dim=16, window_size=32, num_meta_tokens=4, window_rope=True),
        "qkv_bias": False, "o_bias": False, "fmap_bias": False, "gate_bias": True,
    },
}

# Fields every config gets unless the preset overrides them.
_CONFIG_DEFAULTS = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5,
    rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False,
    max_position_embeddings=2048, hidden_act="silu",
)

DTYPES = {
    # --dtype: (safetensors dtype, config torch_dtype, bytes per element)
    "f32": ("F32", "float32", 4),
    "f16": ("F16", "float16", 2),
    "bf16": ("BF16", "bfloat16", 2),
}


def make_config(preset_name, dtype="f32", vocab=None):
    """The config.json dict for a preset."""
    preset = PRESETS[preset_name]
    config = dict(_CONFIG_DEFAULTS)
    config.update(copy.deepcopy(preset["config"]))
    if vocab is not None:
        config["vocab_size"] = vocab
    # Special ids are the last ones of the vocabulary (lizard-tiny: bos 510, eos 511).
    v = config["vocab_size"]
    config["bos_token_id"] = v - 2
    config["eos_token_id"] = [v - 3, v - 1] if preset.get("eos_list") else v - 1
    config["torch_dtype"] = DTYPES[dtype][1]
    if preset["lizard"] is not None:
        config["lizard"] = copy.deepcopy(preset["lizard"])
    return config


def _layer_types(config):
    lizard = config.get("lizard")
    if lizard is None:
        return ["softmax"] * config["num_hidden_layers"]
    return lizard.get("layer_types", ["lizard"] * config["num_hidden_layers"])


def tensor_specs(config, preset_name):
    """[(name, shape, init)] in checkpoint order. init is (kind, *args), see _init_tensor."""
    preset = PRESETS[preset_name]
    hd = config["hidden_size"]
    h = config["num_attention_heads"]
    hkv = config["num_key_value_heads"]
    d = config.get("head_dim", hd // h)
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    specs = [("model.embed_tokens.weight", [vocab, hd], ("normal", 1.0))]
    for layer, kind in enumerate(_layer_types(config)):
        p = f"model.layers.{layer}."
        a = p + "self_attn."
        specs.append((p + "input_layernorm.weight", [hd], ("norm",)))
        for proj, out_dim in (("q_proj", h * d), ("k_proj", hkv * d), ("v_proj", hkv * d)):
            specs.append((a + proj + ".weight", [out_dim, hd], ("normal", hd ** -0.5)))
            if preset["qkv_bias"]:
                specs.append((a + proj + ".bias", [out_dim], ("normal", 0.2)))
        specs.append((a + "o_proj.weight", [hd, h * d], ("normal", (h * d) ** -0.5)))
        if preset["o_bias"]:
            specs.append((a + "o_proj.bias", [hd], ("normal", 0.2)))
        if kind == "lizard":
            lz = config["lizard"]
            f, m = lz["feature_dim"], lz["num_meta_tokens"]
            for fmap in ("feature_map_q", "feature_map_k"):
                specs.append((a + fmap + ".weight", [h, d, f], ("normal", d ** -0.5)))
                if preset["fmap_bias"]:
                    specs.append((a + fmap + ".bias", [h, f], ("normal", 0.5)))
            # Small gate weights: the bias (when present) sets gamma in ~(0.73, 0.98) per head;
            # the input-dependent part moves it around that.
            specs.append((a + "forget_gate.weight", [h, hd], ("normal", 0.5 * hd ** -0.5)))
            if preset["gate_bias"]:
                specs.append((a + "forget_gate.bias", [h], ("uniform", 1.0, 4.0)))
            specs.append((a + "meta_logits", [h, m], ("normal", 1.0)))
            specs.append((a + "window_factor", [h], ("uniform", 0.5, 1.5)))
        specs.append((p + "post_attention_layernorm.weight", [hd], ("norm",)))
        specs.append((p + "mlp.gate_proj.weight", [inter, hd], ("normal", hd ** -0.5)))
        specs.append((p + "mlp.up_proj.weight", [inter, hd], ("normal", hd ** -0.5)))
        specs.append((p + "mlp.down_proj.weight", [hd, inter], ("normal", inter ** -0.5)))
    specs.append(("model.norm.weight", [hd], ("norm",)))
    if not config.get("tie_word_embeddings", False):
        specs.append(("lm_head.weight", [vocab, hd], ("normal", hd ** -0.5)))
    return specs


def _init_tensor(name, shape, init, seed):
    # One generator per tensor, keyed by (seed, name): a tensor's values do not depend on
    # which other tensors the preset has.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    kind = init[0]
    if kind == "normal":
        return rng.normal(0.0, init[1], size=shape)
    if kind == "uniform":
        return rng.uniform(init[1], init[2], size=shape)
    if kind == "norm":  # RMSNorm weights near 1
        return 1.0 + 0.1 * rng.normal(size=shape)
    raise ValueError(kind)


def to_bytes(array, st_dtype):
    """Little-endian bytes of a float array in a safetensors dtype (F32, F16, BF16)."""
    a32 = np.ascontiguousarray(array, dtype="<f4")
    if st_dtype == "F32":
        return a32.tobytes()
    if st_dtype == "F16":
        return a32.astype("<f2").tobytes()
    if st_dtype == "BF16":
        # Round to nearest even on the upper 16 bits (values here are finite).
        bits = a32.view("<u4").astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    raise ValueError(st_dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: [(name, st_dtype, shape, raw_bytes)] written in that order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, st_dtype, shape, data in tensors:
        header[name] = {"dtype": st_dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    # Pad with spaces so the data starts 8-byte aligned.
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for _, _, _, data in tensors:
            f.write(data)


def shard_file_name(index, count):
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_checkpoint(out_dir, config, tensors, shards=1):
    """Writes config.json and the tensors ([(name, st_dtype, shape, bytes)]), in one file or
    in `shards` files of roughly equal size plus model.safetensors.index.json."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    metadata = {"format": "pt"}
    if shards == 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata)
        return
    total = sum(len(t[3]) for t in tensors)
    groups = [[] for _ in range(shards)]
    written = 0
    for t in tensors:
        # Tensor goes to the shard its starting byte falls in; never leave a shard empty.
        g = min(written * shards // total, shards - 1)
        groups[g].append(t)
        written += len(t[3])
    groups = [g for g in groups if g]
    if len(groups) != shards:
        sys.exit(f"cannot split {len(tensors)} tensors into {shards} non-empty shards")
    weight_map = {}
    for i, group in enumerate(groups):
        name = shard_file_name(i, shards)
        write_safetensors(os.path.join(out_dir, name), group, metadata)
        for t in group:
            weight_map[t[0]] = name
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


def make_tensors(config, preset_name, seed, dtype="f32"):
    """[(name, st_dtype, shape, bytes)] of a preset's random weights."""
    st_dtype = DTYPES[dtype][0]
    return [(name, st_dtype, shape, to_bytes(_init_tensor(name, shape, init, seed), st_dtype))
            for name, shape, init in tensor_specs(config, preset_name)]


def make_model(out_dir, preset_name, seed, dtype="f32", shards=1, vocab=None):
    config = make_config(preset_name, dtype, vocab)
    write_checkpoint(out_dir, config, make_tensors(config, preset_name, seed, dtype), shards)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--preset")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--vocab", type=int, help="override the preset's vocab_size")
    parser.add_argument("--list-presets", action="store_true")
    args = parser.parse_args()
    if args.list_presets:
        print("\n".join(PRESETS))
        return
    if args.out is None or args.preset is None or args.seed is None:
        parser.error("--out, --preset and --seed are required")
    if args.preset not in PRESETS:
        parser.error(f"unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
    if args.shards < 1:
        parser.error("--shards must be >= 1")
    if args.vocab is not None and args.vocab < 3:
        parser.error("--vocab must be >= 3 (bos and eos are the last two ids)")
    make_model(args.out, args.preset, args.seed, args.dtype, args.shards, args.vocab)


if __name__ == "__main__":
    main()
