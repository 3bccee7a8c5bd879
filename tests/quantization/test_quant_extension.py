"""Adding a quantizer takes one file: a toy method defined here runs swap -> train step -> pack -> forward -> record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cress_bitnet.kernels import signed_matmul
from cress_bitnet.quantization import (
    METHODS,
    PackedLinear,
    QuantConfig,
    QuantLinear,
    QuantRecord,
    option,
    pack_,
    pack_signs,
    quantize_,
    register_method,
    sign_pm1,
    straight_through,
)


# ---------------------------------------------------------------- the whole method: config, training form, packed form
@dataclass(frozen=True)
class RowSignConfig(QuantConfig):
    """sign(W) times one scale per row: the mean |W| ("mean") or the max |W| ("max")."""

    method: ClassVar[str] = "toy_rowsign"
    scale: str = option("mean", choices=("mean", "max"))


def _row_scale(w: Tensor, how: str) -> Tensor:
    a = w.detach().float().abs()
    return (a.mean(dim=1) if how == "mean" else a.amax(dim=1)).unsqueeze(1)


class RowSignLinear(QuantLinear):
    def quantized_weight(self) -> Tensor:
        return straight_through(lambda w: (sign_pm1(w) * _row_scale(w, self.scale)).to(w.dtype), self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def deployable_bits(self) -> int:
        return self.out_features * -(-self.in_features // 8) * 8 + 16 * (self.out_features + self._bias_values())


class PackedRowSignLinear(PackedLinear):
    def build(self) -> None:
        self.register_buffer("signs", torch.zeros(self.out_features, -(-self.in_features // 8), dtype=torch.uint8))
        self._aux("scales", self.out_features)

    def fill(self, layer: RowSignLinear) -> None:
        self.signs.copy_(pack_signs(layer.weight.detach()))
        self.scales.copy_(_row_scale(layer.weight, layer.scale).squeeze(1))

    def forward(self, x: Tensor) -> Tensor:
        y = signed_matmul(x.float(), self.signs, self.in_features) * self.scales.float()
        return self._add_bias(y).to(x.dtype)


# ---------------------------------------------------------------- the test
@pytest.fixture
def toy_method():
    register_method(RowSignConfig, RowSignLinear, PackedRowSignLinear)
    yield
    METHODS.pop("toy_rowsign")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 5))


def test_a_new_method_from_one_file(toy_method: None) -> None:
    model = _model()
    assert quantize_(model, RowSignConfig(scale="max"), ["0"]) == ["0"]
    assert isinstance(model[0], RowSignLinear) and model[0].scale == "max"
    # a training step reaches the latent weight through the straight-through estimator
    before = model[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(7, 24)
    model(x).square().mean().backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)
    # the record names it, and rebuilds it on a fresh model
    record = QuantRecord.from_json(QuantRecord.of_model(model).to_json())
    assert record.modules == {"0": RowSignConfig(scale="max")}
    model.eval()
    with torch.no_grad():
        trained = model(x)
    # pack: the packed forward equals the training forward (fp16 scales), buffers only, exact deployable size
    bits = model[0].deployable_bits()
    assert pack_(model) == ["0"]
    assert isinstance(model[0], PackedRowSignLinear) and not list(model[0].parameters())
    assert sum(t.numel() * t.element_size() for t in model[0].state_dict().values()) * 8 == bits
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained, rtol=2e-3, atol=2e-3)
    fresh = _model()
    QuantRecord(record.modules, packed=True).apply(fresh)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
