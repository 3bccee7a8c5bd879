"""NeurST-style min/max fake quantization with learned clips (bytedance/neurst ``quant_layers.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import PackedLinear, QuantLinear
from ..config import QuantConfig, option
from ..packing import pack_codes, packed_bits, unpack_codes
from ..registry import register_method

MAX_MINMAX_BITS = 16


@dataclass(frozen=True)
class MinMaxConfig(QuantConfig):
    """``bits`` of weights and activations; initial values of the learned clips c_w and c_a."""

    method: ClassVar[str] = "minmax"
    bits: int = option(8, low=2, high=MAX_MINMAX_BITS, flag="quant_bits", help="bits per weight")
    weight_clip_init: float = option(1.0, low=0.0)
    act_clip_init: float = option(16.0, low=0.0)


class _FakeQuantSymmetric(torch.autograd.Function):
    """TF ``fake_quant_with_min_max_vars`` on [−c·2^(b−1)/(2^(b−1)−1), c] with PACT-style clip gradient.

    Inside the nudged range the gradient passes straight through; values clipped above send their
    gradient to max (= c) and values clipped below to min (= −k·c), so dL/dc = g_max − k·g_min.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, clip: Tensor, bits: int) -> Tensor:
        levels = 2**bits - 1
        k = 2 ** (bits - 1) / (2 ** (bits - 1) - 1)
        xf = x.float()
        hi = clip.float().clamp_min(0)
        lo = -hi * k
        scale = ((hi - lo) / levels).clamp_min(1e-12)
        zero_point = (-lo / scale).round().clamp(0, levels)
        nmin = -zero_point * scale
        nmax = (levels - zero_point) * scale
        below = xf < nmin
        above = xf > nmax
        ctx.save_for_backward(below, above, clip)
        ctx.k = k
        out = ((xf.clamp(nmin, nmax) - nmin) / scale).round_() * scale + nmin
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        below, above, clip = ctx.saved_tensors
        gx = grad.masked_fill(below | above, 0)
        gf = grad.float()
        g_clip = (gf[above].sum() - ctx.k * gf[below].sum()) * (clip > 0)
        return gx, g_clip.to(clip.dtype).reshape(clip.shape), None


def fake_quant_minmax(x: Tensor, clip: Tensor, bits: int = 8) -> Tensor:
    """Symmetric ``bits``-bit fake quant with levels j·c/(2^(b−1)−1), j ∈ [−2^(b−1), 2^(b−1)−1]."""
    return _FakeQuantSymmetric.apply(x, clip, bits)


class MinMaxQuantLinear(QuantLinear):
    """NeurST QAT linear: F.linear(FQ(x; c_a), FQ(W; c_w), b) with learned clips c_w and c_a (config: initial values).

    Call :meth:`clip_regularization` and add it to the loss for NeurST's L2 pull-back on the clips.
    Deployable bits = out·ceil(in·bits/8)·8 + 16·(2 [c_w, c_a] + out [bias]).
    """

    def build(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        cfg = self.config
        self.weight_clip = nn.Parameter(torch.tensor(float(cfg.weight_clip_init), device=device, dtype=dtype))
        self.act_clip = nn.Parameter(torch.tensor(float(cfg.act_clip_init), device=device, dtype=dtype))

    def quantized_weight(self) -> Tensor:
        return fake_quant_minmax(self.weight, self.weight_clip, self.bits)

    def forward(self, x: Tensor) -> Tensor:
        dt = x.dtype
        xq = fake_quant_minmax(x, self.act_clip, self.bits)
        bias = self.bias.to(dt) if self.bias is not None else None
        return F.linear(xq, self.quantized_weight().to(dt), bias)

    def clip_regularization(self, weight_coef: float = 1e-3, act_coef: float = 1e-2) -> Tensor:
        """NeurST's L2 terms on the clips (1e-3 weight, 1e-2 activation)."""
        return weight_coef * self.weight_clip.float().square() + act_coef * self.act_clip.float().square()

    def deployable_bits(self) -> int:
        return packed_bits(self.out_features, self.in_features, self.bits) + 16 * (2 + self._bias_values())


class PackedMinMaxLinear(PackedLinear):
    """NeurST min/max at inference: signed ``bits``-bit weight codes, bit-packed row by row, times c_w/(2^(b−1)−1).

    Buffers: ``codes`` (out, ⌈in·bits/8⌉) uint8 (codes offset by 2^(b−1), little-endian bit stream), ``weight_clip``,
    ``act_clip`` (scalars, fp16): exactly ``deployable_bits()`` at every width, so a budget plan in bits is met by
    the exported file. Files of cress_bitnet 0.1 stored one int8/int16 per code; they are re-packed when loaded.
    The weight is dequantized per forward (there is no integer kernel for it here).
    """

    def build(self) -> None:
        row_bytes = -(-self.in_features * self.config.bits // 8)
        self.register_buffer("codes", torch.zeros(self.out_features, row_bytes, dtype=torch.uint8))
        self._aux("weight_clip")
        self._aux("act_clip")

    @property
    def _offset(self) -> int:
        return 2 ** (self.config.bits - 1)

    def _step(self, clip: Tensor) -> Tensor:
        # fake_quant_minmax's levels are j·c/(2^(b−1)−1); its clamp keeps the step positive for c <= 0.
        return (clip.float().clamp_min(0) / (self._offset - 1)).clamp_min(1e-12)

    def fill(self, layer: MinMaxQuantLinear) -> None:
        q = layer.quantized_weight().detach().float()
        signed = (q / self._step(layer.weight_clip.detach())).round_().long()
        self.codes.copy_(pack_codes(signed + self._offset, self.config.bits))
        self.weight_clip.copy_(layer.weight_clip.detach())
        self.act_clip.copy_(layer.act_clip.detach())

    def signed_codes(self) -> Tensor:
        """The integer weight codes in [−2^(b−1), 2^(b−1) − 1], shape (out, in)."""
        return unpack_codes(self.codes, self.in_features, self.config.bits) - self._offset

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        old = state_dict.get(prefix + "codes")
        if isinstance(old, Tensor) and old.dtype in (torch.int8, torch.int16) and old.shape == (
                self.out_features, self.in_features):  # cress_bitnet 0.1: one signed integer per code
            state_dict[prefix + "codes"] = pack_codes(old.long() + self._offset, self.config.bits)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        xq = fake_quant_minmax(x.float(), self.act_clip.float(), self.config.bits)
        w = self.signed_codes().float() * self._step(self.weight_clip)
        return self._add_bias(F.linear(xq, w)).to(x.dtype)


register_method(MinMaxConfig, MinMaxQuantLinear, PackedMinMaxLinear)
