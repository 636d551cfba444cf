#!/usr/bin/python3
"""Writes the checkpoints the GPU tests compare against the CPU backend, into OUT_DIR/NAME:
every small preset of tools/make_model.py, and two mid-size random models (shapes defined here)
whose attention uses the llama3-8b head size (D = 128, F = 128, w = 128) and a D = 64 shape.

  python3 tools/gpu/make_test_models.py OUT_DIR
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import make_model  # noqa: E402  (tools/make_model.py)

MID_PRESETS = {
    "gpu-mid": {
        "config": dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64),
        "lizard": dict(feature_dim=64, window_size=64, num_meta_tokens=4, window_rope=True),
        "qkv_bias": False, "o_bias": False, "fmap_bias": True, "gate_bias": True,
    },
    "gpu-wide": {
        "config": dict(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=128),
        "lizard": dict(feature_dim=128, window_size=128, num_meta_tokens=4, window_rope=True),
        "qkv_bias": False, "o_bias": False, "fmap_bias": False, "gate_bias": True,
    },
}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    make_model.PRESETS.update(MID_PRESETS)
    for i, name in enumerate(make_model.PRESETS):
        # The mid-size ones in bf16 (exactly the GPU's weights), the rest in float32.
        dtype = "bf16" if name in MID_PRESETS else "f32"
        make_model.make_model(os.path.join(out, name), name, seed=100 + i, dtype=dtype)
        print("wrote", os.path.join(out, name))


if __name__ == "__main__":
    main()
