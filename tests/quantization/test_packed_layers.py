"""Packed inference layers: same forward as the training layers, buffers only, model-level round trip."""

import io

import pytest
import torch
from torch import nn

from cress_bitnet.quantization import (
    METHODS,
    PackedLinear,
    PackedSVCDLinear,
    PackedTSVDLinear,
    QuantLinear,
    SVCDLinear,
    TSVDLinear,
    buffer_nbytes,
    get_method,
    pack_,
    quantize_model,
    quantize_packed_,
    replace_modules,
)


def packed_of(layer, aux_dtype=torch.float16):
    return get_method(layer.config.method).packed.from_quantized(layer, aux_dtype)


def packed_like(layer):
    return get_method(layer.config.method).packed.like(layer)

CASES = [
    ("svcd", {}),
    ("svcd", {"act_quant": "seed"}),
    ("svcd", {"act_quant": "none", "num_groups": 3}),
    ("bitnet", {}),
    ("bitnet", {"num_groups": 2, "act_bits": 6}),
    ("bitnet158", {}),
    ("bitnet158", {"num_groups": 3}),
    ("bcq", {"bits": 1}),
    ("bcq", {"bits": 3}),
    ("bcq", {"bits": 2, "group_size": 16}),
    ("bcq", {"bits": 2, "group_size": 20}),
    ("tsvd", {}),
    ("minmax", {}),
]
IN_F, OUT_F = 80, 13


def _trained(method, options, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = METHODS[method].layer.from_linear(nn.Linear(IN_F, OUT_F, bias=bias), **options)
    with torch.no_grad():  # move SVCD's LayerNorm affine away from its identity init
        for name, p in layer.named_parameters():
            if name.startswith("norm."):
                p.add_(0.1 * torch.randn_like(p))
    return layer.eval()


def _assert_matches(layer, options, ref, out, rtol):
    """Equal up to rtol, except that an SVCD output rounded by the per-token 8-bit quantizer may sit one quantizer
    step away (a different summation order can move z across a rounding boundary); compared in z = y / h units."""
    if isinstance(layer, SVCDLinear) and options.get("act_quant", "per_token") == "per_token":
        z_ref, z_out = ref / layer.h, out / layer.h
        step = z_ref.abs().amax(-1, keepdim=True) / 127
        diff = (z_ref - z_out).abs()
        tol = rtol * z_ref.abs().amax()
        assert bool((diff <= 1.01 * step + tol).all())
        assert (diff > tol).float().mean() < 0.02
    else:
        torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * ref.abs().amax().item())


@pytest.mark.parametrize(("method", "options"), CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_packed_forward_matches_training_layer(mode, method, options, bias):
    layer = _trained(method, options, bias)
    x = torch.randn(6, 2, IN_F)
    with torch.no_grad():
        ref = layer(x)
        exact = packed_of(layer, aux_dtype=torch.float32)
        deploy = packed_of(layer)  # fp16 scales / norms / h / bias
        _assert_matches(layer, options, ref, exact(x), rtol=2e-5)
        _assert_matches(layer, options, ref, deploy(x), rtol=5e-3)
        assert exact(x.double()).dtype == torch.float64


@pytest.mark.parametrize(("method", "options"), CASES)
def test_only_buffers_with_deployable_dtypes_and_sizes(method, options):
    layer = _trained(method, options)
    packed = packed_of(layer)
    assert isinstance(packed, METHODS[method].packed)
    assert list(packed.parameters()) == []
    state = packed.state_dict()
    assert "weight" not in state
    for name, t in state.items():
        assert t.dtype in (torch.uint8, torch.int8, torch.float16), (name, t.dtype)
    assert buffer_nbytes(packed) == layer.deployable_bits() // 8  # svcd: g folded into the LayerNorm affine


def test_svcd_compression_at_decoder_shapes():
    for out_f, in_f in [(768, 768), (768, 3072), (3072, 768)]:
        packed = packed_like(SVCDLinear(in_f, out_f))
        assert 2 * (out_f * in_f + out_f) / buffer_nbytes(packed) >= 14


@pytest.mark.parametrize(("method", "options"), CASES)
def test_skeleton_has_the_packed_state_dict_layout(method, options):
    layer = _trained(method, options)
    packed = packed_of(layer).state_dict()
    skeleton = packed_like(METHODS[method].layer(IN_F, OUT_F, **options))
    from_opts = METHODS[method].packed(IN_F, OUT_F, **options)
    for empty in (skeleton, from_opts):
        ref = {k: (v.shape, v.dtype) for k, v in packed.items()}
        got = {k: (v.shape, v.dtype) for k, v in empty.state_dict().items()}
        if method == "tsvd":  # the rank is only known once a state dict arrives
            assert set(got) == set(ref) and empty.rank == 0
        else:
            assert got == ref
        empty.load_state_dict(packed)
        for k, v in empty.state_dict().items():
            assert torch.equal(v, packed[k])


def test_tsvd_skeleton_adopts_rank_on_load():
    layer = _trained("tsvd", {})
    packed = packed_of(layer)
    assert packed.rank == layer.rank > 0
    empty = PackedTSVDLinear(IN_F, OUT_F)
    empty.load_state_dict(packed.state_dict())
    x = torch.randn(4, IN_F)
    assert empty.rank == packed.rank and torch.equal(empty(x), packed(x))


class Block(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class TinyModel(nn.Module):
    """Embedding, two blocks with widths not divisible by 8, and an output head tied to the embedding."""

    def __init__(self, vocab=11, d=20, hidden=36):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d, hidden), Block(d, hidden)])
        self.output_projection = nn.Linear(d, vocab, bias=False)
        self.output_projection.weight = self.embed.weight

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output_projection(x)


ROUND_TRIP = [("svcd", {}), ("bitnet", {}), ("bitnet158", {}), ("bcq", {"bits": 2, "group_size": 4}), ("tsvd", {}),
              ("minmax", {})]


@pytest.mark.parametrize(("method", "options"), ROUND_TRIP)
def test_pack_model_round_trip(method, options, monkeypatch):
    torch.manual_seed(0)
    model = TinyModel()
    names = quantize_model(model, method, "layers.*.fc1,layers.*.fc2", **options)
    model.eval()
    tokens = torch.randint(0, 11, (3, 5))
    with torch.no_grad():
        ref = model(tokens)
    assert pack_(model) == names
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    with torch.no_grad():
        packed_out = model(tokens)
    torch.testing.assert_close(packed_out, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    torch.manual_seed(1)  # a fresh model: other random weights, same structure, packed before loading
    fresh = TinyModel()
    quantize_model(fresh, method, "layers.*.fc1,layers.*.fc2", **options)
    assert pack_(fresh, skeleton=True) == names
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(tokens), packed_out)

    # what loading an exported checkpoint does: packed layers straight from the configs, never the training form
    # (whose weight-derived init the load would overwrite)
    direct = TinyModel()
    monkeypatch.setattr(METHODS[method].layer, "from_linear",
                        classmethod(lambda *a, **k: pytest.fail("built the training form")))
    assert quantize_packed_(direct, get_method(method).config(**options), "layers.*.fc1,layers.*.fc2") == names
    direct.load_state_dict(state, strict=True)
    direct.eval()
    with torch.no_grad():
        assert torch.equal(direct(tokens), packed_out)


def test_replace_modules_skips_descendants_and_root():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2))
    seen = []

    def build(name, module):
        seen.append(name)
        return nn.Identity()

    names = replace_modules(model, lambda name, m: isinstance(m, (nn.Sequential, nn.Linear)), build)
    assert names == ["0", "1"] and seen == ["0", "1"]
    assert isinstance(model[0], nn.Identity) and isinstance(model[1], nn.Identity)


def test_wrong_layer_type_is_rejected():
    with pytest.raises(TypeError, match="PackedSVCDLinear packs svcd layers"):
        PackedSVCDLinear.like(TSVDLinear(8, 4))
    with pytest.raises(TypeError, match="unknown option"):
        METHODS["svcd"].packed(8, 4, bits=2)
    assert issubclass(METHODS["bcq"].packed, PackedLinear)
