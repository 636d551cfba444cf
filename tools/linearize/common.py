"""What every stage shares: paths, progress lines, token data, devices, resumable training."""
import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tools/: make_model, make_tokenizer

import numpy as np  # noqa: E402
import torch  # noqa: E402


def parser(doc):
    """An ArgumentParser whose --help shows the stage's docstring."""
    lines = doc.strip().split("\n", 1)
    return argparse.ArgumentParser(description=lines[0], epilog=lines[1] if len(lines) > 1 else None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_training_args(p, steps, lr, batch, seq):
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a checkpoint)")
    p.add_argument("--data", required=True, help="tokenizer stage folder (train.npy, val.npy)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop early (and finish normally) after this much training time")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--batch", type=int, default=batch, help="sequences per step")
    p.add_argument("--seq", type=int, default=seq, help="training context in tokens")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda | cpu | auto")
    p.add_argument("--save-every", type=int, default=200, help="resume checkpoint interval")
    p.add_argument("--log-every", type=int, default=20)


def start(stage, args):
    """The device a training stage runs on, or None when OUT already holds its result."""
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(os.path.join(args.out, "result.json")):
        log(stage, "done already")
        return None
    return device(args.device)


def device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def autocast(dev):
    """bf16 autocast on CUDA; nothing on the CPU (exact fp32 there)."""
    if dev == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def log(stage, msg):
    print(f"[{stage}] {msg}", flush=True)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


class Tokens:
    """The token stream of a split (uint16/int32 .npy), sampled as random windows."""

    def __init__(self, path):
        self.ids = np.load(path, mmap_mode="r")

    def __len__(self):
        return len(self.ids)

    def batch(self, rng, batch, seq):
        starts = rng.integers(0, len(self.ids) - seq - 1, size=batch)
        rows = np.stack([np.asarray(self.ids[s:s + seq + 1], dtype=np.int64) for s in starts])
        return torch.from_numpy(rows)

    def windows(self, seq, count):
        """`count` consecutive non-overlapping windows of seq + 1 tokens from the start."""
        count = min(count, (len(self.ids) - 1) // seq)
        return torch.from_numpy(np.stack([np.asarray(self.ids[i * seq:i * seq + seq + 1],
                                                      dtype=np.int64) for i in range(count)]))


def lr_at(step, total, peak, warmup):
    """Linear warm-up, then cosine to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


class Trainer:
    """The loop every training stage runs: lr schedule, progress lines (tokens/s, loss, ETA),
    a time budget, and a resume checkpoint OUT/resume.pt (model, optimizer, step, rng)."""

    def __init__(self, stage, args, model, params, tokens_per_step):
        self.stage, self.args, self.model = stage, args, model
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, betas=(0.9, 0.95),
                                     weight_decay=0.0)
        self.tokens_per_step = tokens_per_step
        self.step = 0
        self.rng = np.random.default_rng(args.seed)
        self.resume_path = os.path.join(args.out, "resume.pt")
        self.history = []
        if os.path.exists(self.resume_path):
            state = torch.load(self.resume_path, map_location="cpu", weights_only=False)  # own file
            model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.history = state["step"], state["history"]
            self.rng.bit_generator.state = state["rng"]
            log(stage, f"resumed at step {self.step}")

    def save(self):
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                    "step": self.step, "history": self.history,
                    "rng": self.rng.bit_generator.state}, self.resume_path + ".tmp")
        os.replace(self.resume_path + ".tmp", self.resume_path)

    def run(self, loss_fn):
        """loss_fn(rng) -> scalar loss of one step. Returns the training wall time in s."""
        a = self.args
        start = time.time()
        n_params = sum(p.numel() for p in self.params)
        log(self.stage, f"training {n_params:,} parameters, {self.tokens_per_step:,} tokens/step, "
                        f"steps {self.step}..{a.steps}")
        last_t, last_step = start, self.step
        while self.step < a.steps:
            if a.max_minutes is not None and time.time() - start > a.max_minutes * 60:
                log(self.stage, f"time budget of {a.max_minutes} min reached at step {self.step}")
                break
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.step, a.steps, a.lr, a.warmup)
            loss = loss_fn(self.rng)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.step += 1
            if self.step % a.log_every == 0 or self.step == a.steps:
                now = time.time()
                rate = (self.step - last_step) * self.tokens_per_step / max(now - last_t, 1e-9)
                eta = (a.steps - self.step) * self.tokens_per_step / max(rate, 1e-9)
                value = loss.item()
                self.history.append((self.step, value))
                log(self.stage, f"step {self.step}/{a.steps} loss {value:.4f} "
                                f"lr {self.opt.param_groups[0]['lr']:.2e} {rate:,.0f} tok/s "
                                f"ETA {eta / 60:.1f} min")
                last_t, last_step = now, self.step
            if self.step % a.save_every == 0:
                self.save()
        self.save()
        return time.time() - start


def next_token_loss(net, rows, dev):
    """Mean cross-entropy of predicting rows[:, 1:] from rows[:, :-1]."""
    with autocast(dev):
        logits = net(rows[:, :-1])
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                             rows[:, 1:].reshape(-1))


def finish(stage, args, net, trainer, wall, val, dev):
    """The end of a training stage: validation loss, OUT/model (float32, LoRA merged) and
    OUT/result.json."""
    import model as lm
    val_loss = evaluate_loss(net, val, args.seq, 64, dev)
    out_model = os.path.join(args.out, "model")
    lm.write_checkpoint(out_model, net.config, net.export_state(), "f32")
    ppl = math.exp(val_loss)
    write_json(os.path.join(args.out, "result.json"),
               {"val_loss": val_loss, "val_ppl": ppl, "steps": trainer.step,
                "train_seconds": wall, "tokens": trainer.step * trainer.tokens_per_step,
                "history": trainer.history})
    log(stage, f"next-token val loss {val_loss:.4f} (ppl {ppl:.2f}), {trainer.step} steps in "
               f"{wall / 60:.1f} min -> {out_model}")


def evaluate_loss(model, tokens, seq, windows, dev, batch=8):
    """Mean next-token cross-entropy over `windows` consecutive windows of the split."""
    data = tokens.windows(seq, windows)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), autocast(dev):
        for i in range(0, len(data), batch):
            rows = data[i:i + batch].to(dev)
            logits = model(rows[:, :-1]).float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += rows[:, 1:].numel()
    model.train()
    return total / max(count, 1)
