#!/usr/bin/python3
"""Stage teacher: pretrains a small Llama (LlamaForCausalLM layout) on the tokenized corpus.

RMSNorm, RoPE, GQA, SwiGLU; next-token loss with AdamW, bf16 autocast on CUDA. --init continues
from any Hugging Face Llama/Mistral folder instead of a random start. Writes OUT/model (a plain
Hugging Face checkpoint folder: config.json + model.safetensors, float32) and OUT/result.json
(validation loss, wall time); OUT/resume.pt lets a stopped run continue.

  python3 tools/linearize/teacher.py --data work/tok --out work/teacher --steps 3000
"""
import os

import common
import model as lm

STAGE = "teacher"


def config_from_args(a, vocab, bos, eos):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": vocab, "hidden_size": a.hidden, "intermediate_size": a.inter,
        "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "head_dim": a.hidden // a.heads,
        "rms_norm_eps": 1e-5, "rope_theta": a.rope_theta, "rope_scaling": None,
        "tie_word_embeddings": True, "attention_bias": False,
        "max_position_embeddings": a.seq, "bos_token_id": bos, "eos_token_id": eos,
    }


def main():
    p = common.parser(__doc__)
    common.add_training_args(p, steps=3000, lr=3e-3, batch=64, seq=512)
    p.add_argument("--init", help="start from this Hugging Face Llama/Mistral folder")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--inter", type=int, default=768)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    a = p.parse_args()
    dev = common.start(STAGE, a)
    if dev is None:
        return
    tok = common.read_json(os.path.join(a.data, "tokenizer.json"))
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    vocab = max(max(tok["model"]["vocab"].values()), max(special.values())) + 1
    if a.init:
        net = lm.load(a.init)
    else:
        net = lm.CausalLM(config_from_args(a, vocab, special["<|begin_of_text|>"],
                                           special["<|end_of_text|>"]))
        net.init_weights(a.seed)
    net = net.to(dev)
    train = common.Tokens(os.path.join(a.data, "train.npy"))
    val = common.Tokens(os.path.join(a.data, "val.npy"))
    common.log(STAGE, f"{len(train):,} train tokens, {len(val):,} val tokens, device {dev}")

    def loss_fn(rng):
        return common.next_token_loss(net, train.batch(rng, a.batch, a.seq).to(dev), dev)

    trainer = common.Trainer(STAGE, a, net, net.parameters(), a.batch * a.seq)
    wall = trainer.run(loss_fn)
    common.finish(STAGE, a, net, trainer, wall, val, dev)


if __name__ == "__main__":
    main()
