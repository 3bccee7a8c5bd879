"""BitNet b1 (Wang et al. 2023, arXiv 2310.11453) and b1.58 (Ma et al. 2024, arXiv 2402.17764): configs, training
layers with their own input norm, and packed inference layers (1-bit sign planes / 2-bit ternary codes)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cress_bitnet.kernels import normquant_forward, signed_matmul, ternary_matmul

from ..base import PackedLinear, QuantLinear
from ..common import (
    EPS,
    check_num_groups,
    fake_quant_per_token,
    row_group_ids,
    row_group_mean,
    sign_pm1,
    straight_through,
)
from ..config import QuantConfig, option
from ..packing import pack_signs, pack_ternary, packed_bits
from ..registry import register_method

BITNET_ACT_QUANT = ("per_token", "none")


@dataclass(frozen=True)
class BitNetConfig(QuantConfig):
    """BitNet b1: per-row-group weight scale; ``act_bits``-bit absmax activations per token (or none)."""

    method: ClassVar[str] = "bitnet"
    num_groups: int = option(1, low=1, flag="quant_groups", help="weight groups over output rows")
    act_quant: str = option("per_token", choices=BITNET_ACT_QUANT, flag="quant_act", help="activation quantizer")
    act_bits: int = option(8, low=2, high=16)

    def check_shape(self, in_features: int, out_features: int) -> None:
        check_num_groups(self.num_groups, out_features)


@dataclass(frozen=True)
class BitNet158Config(BitNetConfig):
    """BitNet b1.58: ternary weights, same options as b1."""

    method: ClassVar[str] = "bitnet158"


class _NormActQuantLinear(QuantLinear):
    """Shared BitNet forward: norm (no affine) -> per-token fake quant -> F.linear with a quantized W.

    The norm has no affine because the paper's LN inside BitLinear is the plain (x − E x)/σ; this keeps
    the deployable form free of extra vectors. Scales are per group of output rows (default one).
    """

    WEIGHT_BITS = 1

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


def _group_absmax(q: Tensor, num_groups: int) -> Tensor:
    """max|q| over each group of output rows of a dequantized weight: the group's scale when |q| ∈ {0, scale}."""
    ids = row_group_ids(q.shape[0], num_groups, q.device)
    return q.new_zeros(num_groups).scatter_reduce(0, ids, q.abs().amax(dim=1), "amax")


class _PackedNormActQuant(PackedLinear):
    """BitNet forward: norm (no affine) -> per-token fake quant -> packed matmul -> per-group scale -> + b."""

    def build(self) -> None:
        self._aux("scales", self.config.num_groups)

    def fill(self, layer: _NormActQuantLinear) -> None:
        q = layer.quantized_weight().detach().float()  # levels × per-group scale, |q| ∈ {0, scale}
        self._store_levels(q)
        self.scales.copy_(_group_absmax(q, self.config.num_groups))

    @abstractmethod
    def _store_levels(self, q: Tensor) -> None:
        ...

    @abstractmethod
    def _levels(self) -> Tensor:
        """The packed weight codes (sign bits or ternary codes)."""

    @abstractmethod
    def _normalize(self, x: Tensor) -> Tensor:
        ...

    @abstractmethod
    def _matmul(self, x: Tensor) -> Tensor:
        ...

    TERNARY: ClassVar[bool] = False

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        fused = normquant_forward(x, self.TERNARY, EPS, cfg.act_bits if cfg.act_quant == "per_token" else 0, EPS,
                                  self._levels(), self.TERNARY, self.scales, self.bias, self.layout)
        if fused is not None:
            return fused
        xn = self._normalize(x.float())
        if cfg.act_quant == "per_token":
            xn = fake_quant_per_token(xn, cfg.act_bits)
        scales = self.scales.float()
        if cfg.num_groups > 1:
            scales = scales[row_group_ids(self.out_features, cfg.num_groups, scales.device)]
        return self._add_bias(self._matmul(xn) * scales).to(x.dtype)


class PackedBitLinear(_PackedNormActQuant):
    """BitNet b1: ``signs`` (out, ⌈in/8⌉) uint8 plus one fp16 β per row group; matches ``deployable_bits()``."""

    def build(self) -> None:
        super().build()
        self.register_buffer("signs", torch.zeros(self.out_features, -(-self.in_features // 8), dtype=torch.uint8))

    def _store_levels(self, q: Tensor) -> None:
        self.signs.copy_(pack_signs(q))

    def _levels(self) -> Tensor:
        return self.signs

    def _normalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.in_features,), eps=EPS)

    def _matmul(self, x: Tensor) -> Tensor:
        return signed_matmul(x, self.signs, self.in_features)


class PackedTernaryLinear(_PackedNormActQuant):
    """BitNet b1.58: ``codes`` (out, ⌈in/4⌉) 2-bit ternary plus one fp16 γ per row group; = ``deployable_bits()``."""

    def build(self) -> None:
        super().build()
        self.register_buffer("codes", torch.zeros(self.out_features, -(-self.in_features // 4), dtype=torch.uint8))

    TERNARY = True

    def _store_levels(self, q: Tensor) -> None:
        self.codes.copy_(pack_ternary(q.sign()))

    def _levels(self) -> Tensor:
        return self.codes

    def _normalize(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.in_features,), eps=EPS)

    def _matmul(self, x: Tensor) -> Tensor:
        return ternary_matmul(x, self.codes, self.in_features)


register_method(BitNetConfig, BitLinear, PackedBitLinear)
register_method(BitNet158Config, TernaryLinear, PackedTernaryLinear)
