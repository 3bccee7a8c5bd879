"""The calibrated SVCD init (label-free fit of g, h, b to the trained layer's outputs) and its model-level driver."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cress_bitnet.quantization import SVCDConfig, SVCDLinear, quantize_
from cress_bitnet.quantization.calibration import quantize_calibrated_
from cress_bitnet.quantization.methods.svcd import fit_signed_rank1
from tests.quantization.test_quant_layers import _gaussian_linear as _linear


def _inputs(kind: str, seed: int) -> torch.Tensor:
    z = torch.randn(400, 256, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.layer_norm(z, (256,)) if kind == "layernorm" else torch.relu(z)


def _rel(layer: nn.Module, linear: nn.Linear, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = linear(x)
        return ((layer(x) - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize(("kind", "max_gain"), [("layernorm", 1.0), ("relu", 0.62)])
def test_calibrated_fits_better_than_signvalue_and_the_papers_init(kind, max_gain):
    linear, x = _linear(), _inputs(kind, 1)
    fitted = SVCDLinear.from_linear(linear, init="calibrated", calibration_inputs=x).eval()
    rel = _rel(fitted, linear, x)
    signvalue = _rel(SVCDLinear.from_linear(linear, init="signvalue").eval(), linear, x)
    constraint = _rel(SVCDLinear.from_linear(linear, init="constraint").eval(), linear, x)
    # measured: layernorm 0.592 = signvalue's (the spread-matched fit is worse in MSE there, so the start is kept),
    # relu 0.521 vs 0.887 (0.498 before the spread is matched); constraint ~1.0
    assert rel <= max_gain * signvalue + 1e-6 and rel < constraint
    # the fit generalises to fresh activations of the same kind (it is not memorising 400 tokens)
    held_out = _inputs(kind, 2)
    assert _rel(fitted, linear, held_out) <= max_gain * _rel(SVCDLinear.from_linear(linear, init="signvalue").eval(),
                                                             linear, held_out) + 0.01
    # fp16-safe: |h| stays above 0.1 · mean |h|, so b = c / h stays bounded, and the fitted layer runs in fp16
    assert fitted.h.abs().min() >= 0.1 * fitted.h.abs().mean() - 1e-6
    with torch.no_grad():
        y16 = fitted.half()(x.half())
    assert torch.isfinite(y16).all()


@pytest.mark.parametrize("kind", ["layernorm", "relu"])
def test_alternating_least_squares_reaches_an_optimum_in_g_and_h(kind):
    """fit_signed_rank1 converges: without the 8-bit rounding, the squared output error is stationary in g and h
    (scale-invariant gradients g·∂L/∂g, h·∂L/∂h ~1e-4, against ~100 at the signvalue start)."""
    linear, x = _linear(), _inputs(kind, 1)

    def scaled_grads(layer: SVCDLinear) -> tuple[float, float]:
        loss = (layer(x) - linear(x).detach()).pow(2).sum()
        gg, gh = torch.autograd.grad(loss, [layer.g, layer.h])
        return (gg * layer.g).norm().item(), (gh * layer.h).norm().item()

    layer = SVCDLinear.from_linear(linear, init="signvalue", act_quant="none")
    start = scaled_grads(layer)
    with torch.no_grad():
        u = torch.nn.functional.layer_norm(x.double(), (256,), layer.norm.weight.double(), layer.norm.bias.double(),
                                           layer.norm.eps)
        s = torch.where(layer.weight - layer.weight.mean() >= 0, 1.0, -1.0).double()
        g, h, c = fit_signed_rank1(u, s, linear(x).double(), layer.g.double(), has_bias=True)
        layer.g.copy_(g)
        layer.h.copy_(h)
        layer.bias.copy_(c / h)
    fitted = scaled_grads(layer)
    assert fitted[0] < 1e-3 * start[0] and fitted[1] < 1e-3 * start[1], (fitted, start)


def test_calibrated_outputs_keep_the_targets_spread():
    """Least squares alone shrinks a 1-bit layer's outputs (regression dilution: ~0.82 of the targets' spread here);
    the calibrated layer gives each output the trained layer's spread (ratio 1), which attention logits need."""
    linear, x = _linear(), _inputs("relu", 1)
    fitted = SVCDLinear.from_linear(linear, init="calibrated", act_quant="none", calibration_inputs=x)
    with torch.no_grad():
        target = linear(x)
        ratio = fitted(x).std(0) / target.std(0)
        u = torch.nn.functional.layer_norm(x.double(), (256,), fitted.norm.weight.double(),
                                           fitted.norm.bias.double(), fitted.norm.eps)
        s = torch.where(fitted.weight - fitted.weight.mean() >= 0, 1.0, -1.0).double()
        g, h, c = fit_signed_rank1(u, s, target.double(), fitted.g.double(), has_bias=True)
        ls_ratio = (((u * g) @ s.T) * h).std(0) / target.double().std(0)
    assert ratio.median().item() == pytest.approx(1.0, abs=1e-3) and ratio.min().item() > 0.99
    assert ls_ratio.median().item() < 0.9


def test_calibrated_is_deterministic_and_needs_data_only_when_asked():
    linear, x = _linear(), _inputs("relu", 1)
    a = SVCDLinear.from_linear(linear, init="calibrated", calibration_inputs=x)
    b = SVCDLinear.from_linear(linear, init="calibrated", calibration_inputs=x.clone())
    for name in ("g", "h", "bias", "weight"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # without data the calibrated layer starts as signvalue; other inits ignore calibration data
    plain = SVCDLinear.from_linear(linear, init="calibrated")
    signvalue = SVCDLinear.from_linear(linear, init="signvalue", calibration_inputs=x)
    assert torch.equal(plain.g, signvalue.g) and torch.equal(plain.h, signvalue.h)
    assert not torch.equal(a.g, plain.g)
    with pytest.raises(ValueError, match="seed"):
        SVCDConfig(init="calibrated", act_quant="seed")


class _Block(nn.Module):
    """LayerNorm -> (a, b: same input) -> sum -> ReLU -> c: a fc1/fc2-like chain with a q/k-like shared input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.norm = nn.LayerNorm(64)
        self.a, self.b, self.c = nn.Linear(64, 128), nn.Linear(64, 128), nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm(x)
        return self.c(torch.relu(self.a(u) + self.b(u)))


def test_driver_swaps_in_forward_order_on_the_partly_quantized_model():
    fp, data = _Block(), torch.randn(300, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = fp(data)
    model = _Block()
    runs = []

    def run() -> None:
        runs.append(1)
        model(data)

    seen = []
    names = quantize_calibrated_(model, SVCDConfig(init="calibrated"), ["a", "b", "c"], run, seen.append)
    assert names == ["a", "b", "c"] and seen == [["a", "b"], ["c"]]
    assert len(runs) == 2  # a and b share their input: one run fits both, then c sees the quantized a + b
    signvalue = _Block()
    quantize_(signvalue, SVCDConfig(init="signvalue"), ["a", "b", "c"])
    with torch.no_grad():
        err = ((model(data) - ref).norm() / ref.norm()).item()
        err_sv = ((signvalue(data) - ref).norm() / ref.norm()).item()
    assert err < 0.6 * err_sv, (err, err_sv)
    # c was fitted on the inputs it sees after a and b were quantized: refitting it on FP inputs is worse
    frozen = _Block()
    quantize_(frozen, SVCDConfig(init="signvalue"), ["a", "b"])
    for n in ("a", "b"):
        getattr(frozen, n).load_state_dict(getattr(model, n).state_dict())
    with torch.no_grad():
        fp_inputs = torch.relu(fp.a(fp.norm(data)) + fp.b(fp.norm(data)))
    frozen.c = SVCDLinear.from_linear(fp.c, init="calibrated", calibration_inputs=fp_inputs)
    with torch.no_grad():
        assert err < ((frozen(data) - ref).norm() / ref.norm()).item()
    with pytest.raises(ValueError, match="calibration data"):
        quantize_calibrated_(_Block(), SVCDConfig(init="calibrated"), ["a"])
