"""quantize_model surgery on a tiny decoder, plus the fairseq-free import guarantee."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cress_bitnet.quantization import METHODS, BitLinear, SVCDLinear, quantize_model

C = 16


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(C, C) for _ in range(4))

    def forward(self, x):
        return self.out_proj(self.q_proj(x) + self.k_proj(x) + self.v_proj(x))


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = _Attn()
        self.encoder_attn = _Attn()
        self.fc1 = nn.Linear(C, 2 * C)
        self.fc2 = nn.Linear(2 * C, C)

    def forward(self, x):
        x = x + self.self_attn(x) + self.encoder_attn(x)
        return x + self.fc2(torch.relu(self.fc1(x)))


class TinyDecoder(nn.Module):
    def __init__(self, vocab=11):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, C)
        self.layers = nn.ModuleList([_Layer(), _Layer()])
        self.output_projection = nn.Linear(C, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output_projection(x)


def _model():
    torch.manual_seed(0)
    return TinyDecoder()


def test_replaces_exactly_matched_modules_and_copies_weights():
    model = _model()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = quantize_model(model, "svcd", "layers.*.encoder_attn.*, layers.1.fc1", num_groups=2)
    projs = ("q_proj", "k_proj", "v_proj", "out_proj")
    expected = sorted([f"layers.{i}.encoder_attn.{p}" for i in (0, 1) for p in projs] + ["layers.1.fc1"])
    assert names == expected
    for name, mod in model.named_modules():
        if name in expected:
            assert type(mod) is SVCDLinear and mod.num_groups == 2
            assert torch.equal(mod.weight, before[name])
        elif name in before:
            assert type(mod) is nn.Linear
    assert type(model.embed_tokens) is nn.Embedding
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 11) and torch.isfinite(out).all()


def test_output_projection_needs_explicit_name():
    model = _model()
    names = quantize_model(model, "bitnet", ["*"])
    assert "output_projection" not in names and len(names) == 2 * 10
    assert type(model.output_projection) is nn.Linear
    # Already-quantized modules are not touched again; the head is, when named exactly.
    assert quantize_model(model, "bitnet", "output_projection") == ["output_projection"]
    assert type(model.output_projection) is BitLinear
    with pytest.raises(ValueError, match=r"layers\.0\.fc1"):
        quantize_model(model, "bitnet", "layers.0.fc1")


def test_wildcard_head_pattern_does_not_select_head():
    with pytest.raises(ValueError, match=r"'output_proj\*' matched no nn.Linear"):
        quantize_model(_model(), "bcq", "output_proj*")


def test_unknown_method_lists_methods():
    with pytest.raises(ValueError) as err:
        quantize_model(_model(), "int3", "*")
    for method in METHODS:
        assert method in str(err.value)


def test_unmatched_pattern_names_pattern_and_shows_modules_without_changes():
    model = _model()
    with pytest.raises(ValueError) as err:
        quantize_model(model, "svcd", "layers.*.fc1,decoder.nope.*")
    msg = str(err.value)
    assert "'decoder.nope.*'" in msg and "layers.0.self_attn.q_proj" in msg
    assert type(model.layers[0].fc1) is nn.Linear  # validated before any swap


def test_unknown_option_raises_before_changes():
    model = _model()
    with pytest.raises(TypeError, match=r"svcd \(SVCDConfig\).*bits"):
        quantize_model(model, "svcd", "*", bits=2)
    assert all(type(m) is not SVCDLinear for m in model.modules())


def test_quantization_package_imports_without_fairseq():
    # Load the package under a stub parent (so cress_bitnet/__init__ is not run) with fairseq blocked.
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, types\n"
        "sys.modules['fairseq'] = None\n"
        f"pkg = types.ModuleType('cress_bitnet'); pkg.__path__ = [{str(root / 'cress_bitnet')!r}]\n"
        "sys.modules['cress_bitnet'] = pkg\n"
        "import cress_bitnet.quantization as q\n"
        "assert sorted(q.METHODS) == ['bcq', 'bitnet', 'bitnet158', 'minmax', 'svcd', 'tsvd']\n"
        "assert not any(m == 'fairseq' or m.startswith('fairseq.') for m in sys.modules if sys.modules[m])\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
