#!/usr/bin/python3
"""Stage export: writes a trained model as a servable checkpoint folder (docs/model-format.md).

Copies the weights in --dtype (bf16 for the shipped models), sets max_position_embeddings
(Lizard's state is position-free, so a Lizard model gets a large one; a teacher keeps its
training context), and adds the tokenizer (tokenizer.json, tokenizer_config.json). LoRA is
already merged by stage 2. `lizard-cli info --model OUT` loads the result.

  python3 tools/linearize/export.py --model work/stage2/model --tokenizer work/tok \
      --out models/lizard-demo
"""
import os
import shutil

import common
import model as lm

STAGE = "export"


def main():
    p = common.parser(__doc__)
    p.add_argument("--model", required=True, help="teacher or stage 2 model folder")
    p.add_argument("--tokenizer", required=True, help="tokenizer stage folder")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--max-positions", type=int, default=None,
                   help="max_position_embeddings (default: 1M for Lizard, kept for a teacher)")
    a = p.parse_args()
    net = lm.load(a.model)
    config = dict(net.config)
    if a.max_positions:
        config["max_position_embeddings"] = a.max_positions
    elif "lizard" in config:
        config["max_position_embeddings"] = 1 << 20
    lm.write_checkpoint(a.out, config, net.export_state(), a.dtype)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(a.tokenizer, name), os.path.join(a.out, name))
    size = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    common.log(STAGE, f"wrote {a.out} ({size / 2**20:.2f} MiB, {a.dtype})")


if __name__ == "__main__":
    main()
