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
import torch.nn.functional as F

STAGE = "stage2"


def main():
    p = common.parser(__doc__)
    common.add_training_args(p, steps=1500, lr=1e-3, batch=32, seq=512)
    p.add_argument("--init", required=True, help="stage 1 output model folder")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--gla-form", choices=["folded", "plain"], default="folded")
    a = p.parse_args()
    dev = common.device(a.device)
    os.makedirs(a.out, exist_ok=True)
    if os.path.exists(os.path.join(a.out, "result.json")):
        common.log(STAGE, "done already")
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
        rows = train.batch(rng, a.batch, a.seq).to(dev)
        with common.autocast(dev):
            logits = net(rows[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               rows[:, 1:].reshape(-1))

    trainer = common.Trainer(STAGE, a, net, params, a.batch * a.seq)
    wall = trainer.run(loss_fn)
    val_loss = common.evaluate_loss(net, val, a.seq, 64, dev)
    lm.write_checkpoint(os.path.join(a.out, "model"), net.config, net.export_state(), "f32")
    common.write_json(os.path.join(a.out, "result.json"),
                      {"val_loss": val_loss, "val_ppl": float(torch.tensor(val_loss).exp()),
                       "steps": trainer.step, "train_seconds": wall, "history": trainer.history})
    common.log(STAGE, f"val loss {val_loss:.4f} (ppl {torch.tensor(val_loss).exp():.2f}), "
                      f"{wall / 60:.1f} min")


if __name__ == "__main__":
    main()
