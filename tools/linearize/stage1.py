#!/usr/bin/python3
"""Stage 1 (attention transfer): teaches each Lizard layer to reproduce its teacher layer.

The teacher (any Hugging Face Llama/Mistral folder) is frozen. Every layer listed as "lizard"
gets the Lizard modules (per-head feature maps for q and k with bias, a scalar forget gate per
head, meta-memory logits, a window factor), and only those train: the loss is the mean over
layers of the MSE between the layer's Lizard attention output and its softmax attention output,
both computed from the teacher's own hidden states. --softmax-layers keeps some layers as
softmax attention (a hybrid model, written as layer_types). Writes OUT/model (our checkpoint
format, float32) and OUT/result.json.

  python3 tools/linearize/stage1.py --teacher work/teacher/model --data work/tok --out work/stage1
"""
import os

import common
import model as lm
import torch
import torch.nn.functional as F

STAGE = "stage1"


def lizard_config(a, layers):
    softmax = set(int(x) for x in a.softmax_layers.split(",") if x.strip())
    cfg = {"feature_dim": a.feature_dim, "window_size": a.window, "num_meta_tokens": a.meta,
           "window_rope": True, "gla_normalize": True}
    if softmax:
        cfg["layer_types"] = ["softmax" if l in softmax else "lizard" for l in range(layers)]
    return cfg


def main():
    p = common.parser(__doc__)
    common.add_training_args(p, steps=600, lr=1e-2, batch=32, seq=512)
    p.add_argument("--teacher", required=True, help="Hugging Face Llama/Mistral folder")
    p.add_argument("--feature-dim", type=int, default=64, help="F (feature maps give 2F)")
    p.add_argument("--window", type=int, default=128, help="window size w")
    p.add_argument("--meta", type=int, default=4, help="meta-memory tokens m")
    p.add_argument("--softmax-layers", default="", help="comma-separated layers kept softmax")
    p.add_argument("--gla-form", choices=["folded", "plain"], default="folded")
    a = p.parse_args()
    dev = common.start(STAGE, a)
    if dev is None:
        return
    net = lm.load(a.teacher)
    net.to_lizard(lizard_config(a, net.s.layers))
    net = net.to(dev)
    net.set_gla(a.gla_form, torch.bfloat16 if dev == "cuda" else torch.float32)
    for p_ in net.parameters():
        p_.requires_grad_(False)
    params = [q for layer in net.model.layers if layer.self_attn.kind == "lizard"
              for q in layer.self_attn.lizard_parameters()]
    for q in params:
        q.requires_grad_(True)
    train = common.Tokens(os.path.join(a.data, "train.npy"))
    val = common.Tokens(os.path.join(a.data, "val.npy"))
    lizard_layers = [l for l, layer in enumerate(net.model.layers)
                     if layer.self_attn.kind == "lizard"]

    def loss_fn(rng):
        rows = train.batch(rng, a.batch, a.seq).to(dev)
        captured = []
        with torch.no_grad(), common.autocast(dev):
            net(rows[:, :-1], capture=captured, kind="softmax")
        losses = []
        with common.autocast(dev):
            for l in lizard_layers:
                u, target = captured[l]
                pred = net.model.layers[l].self_attn(u)
                losses.append(F.mse_loss(pred.float(), target.float()))
        return torch.stack(losses).mean()

    trainer = common.Trainer(STAGE, a, net, params, a.batch * a.seq)
    wall = trainer.run(loss_fn)
    common.finish(STAGE, a, net, trainer, wall, val, dev)


if __name__ == "__main__":
    main()
