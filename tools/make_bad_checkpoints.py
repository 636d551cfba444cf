#!/usr/bin/python3
"""Writes malformed checkpoints for the loader's tests.

  /usr/bin/python3 tools/make_bad_checkpoints.py --out DIR

Each case is a subfolder of DIR, derived from the valid "tiny-basic" preset with one defect.
DIR/cases.json maps case name -> a substring the loader's error message must contain.
"""
import argparse
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model  # noqa: E402  (the writer of valid checkpoints)

PRESET = "tiny-basic"  # L=2, Hd=32, H=4, Hkv=2, D=8, all layers lizard
SEED = 7


def _valid(out_dir, shards=1):
    """Writes the valid checkpoint; returns (config, tensors) for cases that edit them."""
    config = make_model.make_config(PRESET)
    tensors = make_model.make_tensors(config, PRESET, SEED)
    make_model.write_checkpoint(out_dir, config, tensors, shards)
    return config, tensors


def _write(out_dir, config, tensors):
    shutil.rmtree(out_dir, ignore_errors=True)
    make_model.write_checkpoint(out_dir, config, tensors)


def _replace(tensors, name, new):
    return [new if t[0] == name else t for t in tensors]


def missing_tensor(d):
    name = "model.layers.1.mlp.up_proj.weight"
    config, tensors = _valid(d)
    _write(d, config, [t for t in tensors if t[0] != name])
    return name


def wrong_shape(d):
    # k_proj should be [Hkv*D, Hd] = [16, 32]; store [8, 32].
    name = "model.layers.0.self_attn.k_proj.weight"
    config, tensors = _valid(d)
    _, dtype, shape, data = next(t for t in tensors if t[0] == name)
    _write(d, config, _replace(tensors, name, (name, dtype, [8, 32], data[:len(data) // 2])))
    return name


def byte_count_mismatch(d):
    # The header's shape [16, 32] F32 needs 2048 bytes; the data_offsets hold half of that.
    name = "model.layers.0.self_attn.v_proj.weight"
    config, tensors = _valid(d)
    _, dtype, shape, data = next(t for t in tensors if t[0] == name)
    _write(d, config, _replace(tensors, name, (name, dtype, shape, data[:len(data) // 2])))
    return name


def unknown_dtype(d):
    # I8 with a byte count that matches its shape, so only the dtype is wrong.
    name = "model.layers.0.self_attn.window_factor"
    config, tensors = _valid(d)
    _, _, shape, _ = next(t for t in tensors if t[0] == name)
    _write(d, config, _replace(tensors, name, (name, "I8", shape, bytes(shape[0]))))
    return "dtype"


def truncated_file(d):
    _valid(d)
    path = os.path.join(d, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return "model.safetensors"


def bad_header_json(d):
    _valid(d)
    path = os.path.join(d, "model.safetensors")
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    # Same length, so only the JSON is broken: cut the header's closing brace.
    header = blob[8:8 + header_len].rstrip(b" ")[:-1]
    header += b" " * (header_len - len(header))
    with open(path, "wb") as f:
        f.write(blob[:8] + header + blob[8 + header_len:])
    return "header"


def header_too_long(d):
    # The header length field claims more bytes than the file holds.
    _valid(d)
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", os.path.getsize(path) * 2))
    return "model.safetensors"


def offsets_out_of_range(d):
    # A tensor whose data_offsets leave the file; header and file are otherwise consistent.
    name = "model.norm.weight"
    _valid(d)
    path = os.path.join(d, "model.safetensors")
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + 10**6, end + 10**6]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + header_len:])
    return name


def no_weights(d):
    _valid(d)
    os.remove(os.path.join(d, "model.safetensors"))
    return "model.safetensors"


def bad_config_json(d):
    _valid(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"vocab_size": 128, "hidden_size": ')
    return "config.json"


def missing_config(d):
    _valid(d)
    os.remove(os.path.join(d, "config.json"))
    return "config.json"


def softmax_layer_with_lizard_tensor(d):
    # layer_types says layer 1 is softmax, but the checkpoint still holds one lizard tensor of
    # layer 1 (only one, so the loader's message names exactly it).
    extra = "model.layers.1.self_attn.window_factor"
    config, tensors = _valid(d)
    config["lizard"]["layer_types"] = ["lizard", "softmax"]
    lizard_parts = ("feature_map_", "forget_gate", "meta_logits", "window_factor")

    def dropped(name):
        return (name != extra and name.startswith("model.layers.1.self_attn.")
                and any(part in name for part in lizard_parts))

    _write(d, config, [t for t in tensors if not dropped(t[0])])
    return extra


def heads_not_divisible(d):
    # H=4 with Hkv=3.
    config, tensors = _valid(d)
    config["num_key_value_heads"] = 3
    _write(d, config, tensors)
    return "num_key_value_heads"


def layer_types_wrong_length(d):
    config, tensors = _valid(d)
    config["lizard"]["layer_types"] = ["lizard", "lizard", "lizard"]
    _write(d, config, tensors)
    return "layer_types"


def missing_shard(d):
    _valid(d, shards=2)
    name = make_model.shard_file_name(1, 2)
    os.remove(os.path.join(d, name))
    return name


CASES = [
    missing_tensor, wrong_shape, byte_count_mismatch, unknown_dtype, truncated_file,
    bad_header_json, header_too_long, offsets_out_of_range, no_weights, bad_config_json,
    missing_config,
    softmax_layer_with_lizard_tensor, heads_not_divisible, layer_types_wrong_length,
    missing_shard,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    expected = {}
    for case in CASES:
        case_dir = os.path.join(args.out, case.__name__)
        shutil.rmtree(case_dir, ignore_errors=True)
        expected[case.__name__] = case(case_dir)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
