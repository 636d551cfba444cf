#!/usr/bin/python3
"""Unit tests of tools/linearize: the GLA forms against the recurrence, the PyTorch model against
the float64 reference of the spec (tests/reference/lizard_ref.py) on every test preset, LoRA
merging and the checkpoint round trip."""
import os
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "tools", "linearize"), os.path.join(ROOT, "tools"),
                os.path.join(ROOT, "tests", "reference")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lizard_attention as la  # noqa: E402
import lizard_ref  # noqa: E402
import make_model  # noqa: E402
import model as lm  # noqa: E402


def gla_inputs(t, gate_shift, seed=0, b=2, h=3, d=8, f=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, t, d, generator=g)
    w = torch.randn(h, d, f, generator=g)
    bias = torch.randn(h, f, generator=g)
    lq = la.log_feature_map(x, w, bias)
    lk = la.log_feature_map(torch.randn(b, h, t, d, generator=g), w, bias)
    v = torch.randn(b, h, t, d, generator=g)
    log_gate = F.logsigmoid(torch.randn(b, h, t, generator=g) + gate_shift)
    return lq, lk, v, log_gate


class GlaForms(unittest.TestCase):
    def test_chunked_forms_equal_the_recurrence(self):
        # gate_shift 3: gammas near 1; -3: fast decay; -8: a chunk's decay is past the folded
        # form's range, which must then fall back to the plain form.
        for t, chunk in ((37, 8), (64, 16), (5, 32)):
            for shift in (3.0, -3.0, -8.0):
                for normalize in (True, False):
                    lq, lk, v, g = gla_inputs(t, shift)
                    ref, _ = la.gla_recurrent(lq, lk, v, g, normalize)
                    for folded in (False, True):
                        y = la.gla_chunked(lq, lk, v, g, normalize, chunk=chunk, folded=folded)
                        err = (y - ref).abs().max().item() / ref.abs().max().item()
                        self.assertLess(err, 1e-5, (t, chunk, shift, normalize, folded))

    def test_recurrent_state_carries_over(self):
        lq, lk, v, g = gla_inputs(20, 2.0)
        whole, _ = la.gla_recurrent(lq, lk, v, g, True)
        first, state = la.gla_recurrent(lq[:, :, :12], lk[:, :, :12], v[:, :, :12], g[:, :, :12], True)
        second, _ = la.gla_recurrent(lq[:, :, 12:], lk[:, :, 12:], v[:, :, 12:], g[:, :, 12:], True,
                                     state=state)
        self.assertTrue(torch.allclose(torch.cat([first, second], 2), whole, atol=1e-6))


class ModelMatchesSpec(unittest.TestCase):
    def test_every_preset_and_form_matches_the_reference(self):
        tokens_count = 41  # longer than every preset's window
        with tempfile.TemporaryDirectory() as tmp:
            for preset in make_model.PRESETS:
                if preset == "lizard-tiny":
                    continue
                folder = os.path.join(tmp, preset)
                make_model.make_model(folder, preset, seed=5)
                net = lm.load(folder)
                vocab = net.config["vocab_size"]
                tokens = np.random.default_rng(3).integers(0, vocab, size=tokens_count).tolist()
                ref = lizard_ref.reference_logits(folder, tokens)
                for form in ("recurrent", "plain", "folded"):
                    net.set_gla(form, torch.float32)
                    for layer in net.model.layers:
                        layer.self_attn.chunk = 16
                    with torch.no_grad():
                        out = net(torch.tensor([tokens]))[0].double().numpy()
                    err = np.abs(out - ref).max() / np.abs(ref).max()
                    self.assertLess(err, 1e-5, (preset, form))


class Loading(unittest.TestCase):
    def test_sharded_bf16_checkpoint_loads_like_a_single_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            make_model.make_model(os.path.join(tmp, "one"), "tiny-llama3", seed=4, dtype="bf16")
            make_model.make_model(os.path.join(tmp, "two"), "tiny-llama3", seed=4, dtype="bf16",
                                  shards=2)
            self.assertTrue(os.path.exists(os.path.join(tmp, "two",
                                                        "model.safetensors.index.json")))
            one, two = lm.load(os.path.join(tmp, "one")), lm.load(os.path.join(tmp, "two"))
            for name, value in one.state_dict().items():
                self.assertTrue(torch.equal(value, two.state_dict()[name]), name)


class LoraAndExport(unittest.TestCase):
    def test_merged_lora_export_computes_the_same(self):
        with tempfile.TemporaryDirectory() as tmp:
            make_model.make_model(os.path.join(tmp, "m"), "tiny-basic", seed=1)
            net = lm.load(os.path.join(tmp, "m"))
            torch.manual_seed(0)
            for layer in net.model.layers:
                layer.self_attn.add_lora(rank=4, alpha=8)
                for lora in layer.self_attn.lora.values():
                    torch.nn.init.normal_(lora.b, std=0.1)
            tokens = torch.randint(0, net.config["vocab_size"], (2, 19))
            with torch.no_grad():
                before = net(tokens)
            lm.write_checkpoint(os.path.join(tmp, "out"), net.config, net.export_state(), "f32")
            again = lm.load(os.path.join(tmp, "out"))
            with torch.no_grad():
                after = again(tokens)
            self.assertTrue(torch.allclose(before, after, atol=1e-4))
            self.assertFalse(any("lora" in k for k in lm.read_checkpoint(
                os.path.join(tmp, "out"))[1]))

    def test_bf16_checkpoint_round_trip(self):
        with tempfile.TemporaryDirectory() as tmp:
            make_model.make_model(os.path.join(tmp, "m"), "tiny-hybrid", seed=2)
            net = lm.load(os.path.join(tmp, "m"))
            lm.write_checkpoint(os.path.join(tmp, "b"), net.config, net.export_state(), "bf16")
            back = lm.load(os.path.join(tmp, "b"))
            for name, value in net.state_dict().items():
                self.assertTrue(torch.equal(back.state_dict()[name],
                                            value.to(torch.bfloat16).float()), name)


if __name__ == "__main__":
    unittest.main()
