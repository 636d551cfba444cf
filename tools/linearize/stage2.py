#!/usr/bin/python3
"""Stage 2 (fine-tuning): LoRA on q, k, v plus the Lizard modules, next-token loss.

Starts from stage 1's checkpoint; the base weights stay frozen except through LoRA (rank 8,
alpha 16 as in the paper), which is merged into q_proj/k_proj/v_proj when the model is written.
Writes OUT/model (our checkpoint format, float32, LoRA merged) and OUT/result.json.

  python3 tools/linearize/stage2.py --init work/stage1/model --data work/tok --out work/stage2
"""
import os

import common
import model as lm
import torch

STAGE = "stage2"


def main():
    p = common.parser(__doc__)
    common.add_training_args(p, steps=1500, lr=1e-3, batch=32, seq=512)
    p.add_argument("--init", required=True, help="stage 1 output model folder")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--gla-form", choices=["folded", "plain"], default="folded")
    a = p.parse_args()
    dev = common.start(STAGE, a)
    if dev is None:
        return
    net = lm.load(a.init)
    for p_ in net.parameters():
        p_.requires_grad_(False)
    torch.manual_seed(a.seed)
    params = []
    for layer in net.model.layers:
        attn = layer.self_attn
        if attn.kind != "lizard":
            continue
        attn.add_lora(a.rank, a.alpha)
        params += list(attn.lora.parameters()) + attn.lizard_parameters()
    for q in params:
        q.requires_grad_(True)
    net = net.to(dev)
    net.set_gla(a.gla_form, torch.bfloat16 if dev == "cuda" else torch.float32)
    train = common.Tokens(os.path.join(a.data, "train.npy"))
    val = common.Tokens(os.path.join(a.data, "val.npy"))

    def loss_fn(rng):
        return common.next_token_loss(net, train.batch(rng, a.batch, a.seq).to(dev), dev)

    trainer = common.Trainer(STAGE, a, net, params, a.batch * a.seq)
    wall = trainer.run(loss_fn)
    common.finish(STAGE, a, net, trainer, wall, val, dev)


if __name__ == "__main__":
    main()
