"""NeurST-style min/max fake quantization with learned clips (quant.md §5)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import QuantLinear
from .packing import packed_bits


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
    """NeurST QAT linear: F.linear(FQ(x; c_a), FQ(W; c_w), b) with learned clips c_w (1.0) and c_a (16.0).

    Call :meth:`clip_regularization` and add it to the loss for NeurST's L2 pull-back on the clips.
    Deployable bits = out·ceil(in·bits/8)·8 + 16·(2 [c_w, c_a] + out [bias]).
    """

    OPTIONS = ("bits", "weight_clip", "act_clip")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 8,
        weight_clip: float = 1.0,
        act_clip: float = 16.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not 2 <= bits <= 16:
            raise ValueError(f"minmax bits must be in [2, 16], got {bits}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.bits = bits
        self.weight_clip = nn.Parameter(torch.tensor(float(weight_clip), device=device, dtype=dtype))
        self.act_clip = nn.Parameter(torch.tensor(float(act_clip), device=device, dtype=dtype))

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
