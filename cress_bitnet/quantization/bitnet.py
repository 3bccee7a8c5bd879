"""BitNet b1 (1-bit, quant.md §1.3) and b1.58 (ternary, §1.4) linears with their own input norm."""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import QuantLinear
from .common import EPS, check_num_groups, fake_quant_per_token, row_group_mean, sign_pm1, straight_through
from .packing import packed_bits

BITNET_ACT_QUANT = ("per_token", "none")


class _NormActQuantLinear(QuantLinear):
    """Shared BitNet forward: norm (no affine) -> per-token fake quant -> F.linear with a quantized W.

    The norm has no affine because the paper's LN inside BitLinear is the plain (x − E x)/σ; this keeps
    the deployable form free of extra vectors. Scales are per group of output rows (default one).
    """

    OPTIONS = ("num_groups", "act_quant", "act_bits")
    WEIGHT_BITS = 1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        num_groups: int = 1,
        act_quant: str = "per_token",
        act_bits: int = 8,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if act_quant not in BITNET_ACT_QUANT:
            raise ValueError(f"unknown act_quant {act_quant!r}; choices: {list(BITNET_ACT_QUANT)}")
        check_num_groups(num_groups, out_features)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.num_groups = num_groups
        self.act_quant = act_quant
        self.act_bits = act_bits

    @abstractmethod
    def _normalize(self, x: Tensor) -> Tensor:
        ...

    @abstractmethod
    def _quantize(self, w: Tensor) -> Tensor:
        ...

    def quantized_weight(self) -> Tensor:
        """Dequantized weight (levels times per-group scale), straight-through to the latent W."""
        return straight_through(self._quantize, self.weight)

    def forward(self, x: Tensor) -> Tensor:
        dt = x.dtype
        xn = self._normalize(x)
        if self.act_quant == "per_token":
            xn = fake_quant_per_token(xn, self.act_bits)
        bias = self.bias.to(dt) if self.bias is not None else None
        return F.linear(xn, self.quantized_weight().to(dt), bias)

    def deployable_bits(self) -> int:
        planes = packed_bits(self.out_features, self.in_features, self.WEIGHT_BITS)
        return planes + 16 * (self.num_groups + self._bias_values())


class BitLinear(_NormActQuantLinear):
    """BitNet b1: y = F.linear(Q8(LN(x)), sign(W − α_k)·β_k, b), α_k = mean W_k, β_k = mean|W_k|.

    LN has no affine. ``act_quant``: "per_token" (absmax ``act_bits``-bit per token, STE) or "none".
    STE: identity gradient to W. Deployable bits = out·ceil(in/8)·8 + 16·(num_groups [β] + out [bias]).
    """

    WEIGHT_BITS = 1

    def _normalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.in_features,), eps=EPS)

    def _quantize(self, w: Tensor) -> Tensor:
        alpha = row_group_mean(w, self.num_groups)
        beta = row_group_mean(w.abs(), self.num_groups)
        return (sign_pm1(w.float() - alpha) * beta).to(w.dtype)


class TernaryLinear(_NormActQuantLinear):
    """BitNet b1.58: y = F.linear(Q8(RMSNorm(x)), RoundClip(W/γ_k, −1, 1)·γ_k, b), γ_k = max(mean|W_k|, eps).

    RMSNorm (no affine) as in the b1.58 FAQ recipe. STE: identity gradient to W.
    Deployable bits = out·ceil(in/4)·8 (2-bit codes) + 16·(num_groups [γ] + out [bias]).
    """

    WEIGHT_BITS = 2

    def _normalize(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.in_features,), eps=EPS)

    def _quantize(self, w: Tensor) -> Tensor:
        gamma = row_group_mean(w.abs(), self.num_groups).clamp_min(EPS)
        return ((w.float() / gamma).round_().clamp_(-1, 1) * gamma).to(w.dtype)
