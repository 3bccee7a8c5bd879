"""Binary-code quantization, W_row ≈ Σ_i α_i b_i with b_i ∈ {−1, +1}: config, training and packed layers.

Greedy fit: Guo et al. 2017; alternating fit: Xu et al., ICLR 2018 (arXiv 1802.00150)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cress_bitnet.kernels import signed_matmul

from ..base import PackedLinear, QuantLinear
from ..common import check_group_size, column_groups, sign_pm1, straight_through
from ..config import QuantConfig, option
from ..packing import pack_signs, packed_bits, unpack_signs
from ..registry import register_method

BCQ_FITS = ("greedy", "alternating")
MAX_BCQ_BITS = 4


@dataclass(frozen=True)
class BCQConfig(QuantConfig):
    """``bits`` sign planes per weight, one α per row (or per ``group_size`` inputs), fitted by ``fit``."""

    method: ClassVar[str] = "bcq"
    bits: int = option(2, low=1, high=MAX_BCQ_BITS, flag="quant_bits", help="bits per weight")
    group_size: int | None = option(None, low=1)
    fit: str = option("greedy", choices=BCQ_FITS, help="greedy (Guo et al. 2017) or alternating (Xu et al. 2018)")
    rounds: int = option(2, low=0)

    def check_shape(self, in_features: int, out_features: int) -> None:
        check_group_size(in_features, self.group_size)


def bcq_greedy(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Greedy residual binarisation (Guo et al. 2017) over the last dim of ``w`` (fp32).

    Returns alpha (..., bits) and signs (..., bits, n). Optimal for bits = 1.
    """
    r = w.float()
    alphas, planes = [], []
    for _ in range(bits):
        b = sign_pm1(r)
        a = r.abs().mean(dim=-1, keepdim=True)
        r = r - a * b
        alphas.append(a)
        planes.append(b)
    return torch.cat(alphas, dim=-1), torch.stack(planes, dim=-2)


def _code_signs(bits: int, device: torch.device) -> Tensor:
    # Row c holds the ±1 pattern of code c: bit i of c set -> +1 for plane i.
    codes = torch.arange(2**bits, device=device)
    return ((codes.unsqueeze(1) >> torch.arange(bits, device=device)) & 1).float() * 2 - 1


def bcq_alternating(w: Tensor, bits: int, rounds: int = 2) -> tuple[Tensor, Tensor]:
    """Alternating BCQ (Xu et al. 2018): greedy start, then ``rounds`` of (least-squares α, nearest-level B).

    Each half-step is optimal given the other, so the reconstruction error never increases. The B step
    sorts the 2^bits levels Σ ±α_i and assigns each weight by binary search (``searchsorted``).
    """
    wf = w.float()
    alpha, signs = bcq_greedy(wf, bits)
    if bits == 1:
        return alpha, signs
    n = wf.shape[-1]
    table = _code_signs(bits, wf.device)
    eye = torch.eye(bits, device=wf.device)
    for _ in range(rounds):
        gram = signs @ signs.transpose(-1, -2)
        rhs = (signs @ wf.unsqueeze(-1)).squeeze(-1)
        # Relative damping keeps the solve defined when two planes coincide.
        alpha = torch.linalg.solve(gram + (1e-6 * n) * eye, rhs)
        levels, order = (alpha @ table.T).sort(dim=-1)
        mids = (levels[..., 1:] + levels[..., :-1]) * 0.5
        idx = torch.searchsorted(mids.contiguous(), wf.contiguous())
        signs = table[order.gather(-1, idx)].transpose(-1, -2)
    return alpha, signs


def bcq_reconstruct(alpha: Tensor, signs: Tensor) -> Tensor:
    """Σ_i α_i b_i from alpha (..., q) and signs (..., q, n)."""
    return (alpha.unsqueeze(-1) * signs).sum(dim=-2)


class BCQLinear(QuantLinear):
    """Linear with a BCQ weight refit from the latent W in every forward; STE to W; fp activations.

    One α vector per output row, or per group of ``group_size`` consecutive inputs (must divide in).
    ``fit``: "greedy" or "alternating" (``rounds`` refinement rounds; Xu et al. find 2 enough).
    Deployable bits = bits·out·ceil(in/8)·8 (one sign plane per bit) + 16·(out·n_groups·bits [α] + out [bias]).
    """

    @property
    def n_groups(self) -> int:
        return 1 if self.group_size is None else self.in_features // self.group_size

    def bcq_fit(self) -> tuple[Tensor, Tensor]:
        """Fit of the current latent weight: alpha (out, n_groups, bits), signs (out, n_groups, bits, group)."""
        return self._fit(self.weight.detach())

    def _fit(self, w: Tensor) -> tuple[Tensor, Tensor]:
        grouped = column_groups(w, self.group_size)
        if self.fit == "greedy":
            return bcq_greedy(grouped, self.bits)
        return bcq_alternating(grouped, self.bits, self.rounds)

    def _dequantize(self, w: Tensor) -> Tensor:
        return bcq_reconstruct(*self._fit(w)).reshape(w.shape).to(w.dtype)

    def quantized_weight(self) -> Tensor:
        """Σ_i α_i b_i per row/group, straight-through to the latent W."""
        return straight_through(self._dequantize, self.weight)

    def forward(self, x: Tensor) -> Tensor:
        dt = x.dtype
        bias = self.bias.to(dt) if self.bias is not None else None
        return F.linear(x, self.quantized_weight().to(dt), bias)

    def deployable_bits(self) -> int:
        planes = self.bits * packed_bits(self.out_features, self.in_features, 1)
        return planes + 16 * (self.out_features * self.n_groups * self.bits + self._bias_values())


class PackedBCQLinear(PackedLinear):
    """BCQ at inference: y = Σ_i α_i ⊙ (S_i x) + b with one packed sign plane per bit.

    Buffers: ``planes`` (bits, out, ⌈in/8⌉) uint8, ``alphas`` (out, n_groups, bits) fp16 — matches
    ``deployable_bits()``. All planes go through one kernel call (stacked as bits·out rows); with column groups
    each group is one call on byte-aligned slices, or (group_size not a multiple of 8) W is rebuilt per forward.
    """

    @property
    def n_groups(self) -> int:
        return 1 if self.config.group_size is None else self.in_features // self.config.group_size

    def build(self) -> None:
        bits = self.config.bits
        self.register_buffer("planes", torch.zeros(bits, self.out_features, -(-self.in_features // 8),
                                                   dtype=torch.uint8))
        self._aux("alphas", self.out_features, self.n_groups, bits)

    def fill(self, layer: BCQLinear) -> None:
        alpha, signs = layer.bcq_fit()  # (out, G, bits), (out, G, bits, gs)
        planes = signs.permute(2, 0, 1, 3).reshape(self.config.bits, self.out_features, self.in_features)
        self.planes.copy_(pack_signs(planes))
        self.alphas.copy_(alpha)

    def forward(self, x: Tensor) -> Tensor:
        bits, gs = self.config.bits, self.config.group_size
        xf = x.float()
        alphas = self.alphas.float()  # (out, G, bits)
        rows = self.planes.reshape(bits * self.out_features, -1)
        if self.n_groups == 1:
            z = signed_matmul(xf, rows, self.in_features).unflatten(-1, (bits, self.out_features))
            y = (z * alphas[:, 0, :].T).sum(dim=-2)
        elif gs % 8 == 0:
            gb = gs // 8
            y = 0
            for g in range(self.n_groups):
                z = signed_matmul(xf[..., g * gs : (g + 1) * gs], rows[:, g * gb : (g + 1) * gb], gs)
                y = y + (z.unflatten(-1, (bits, self.out_features)) * alphas[:, g, :].T).sum(dim=-2)
        else:
            signs = unpack_signs(self.planes, self.in_features).unflatten(-1, (self.n_groups, gs))
            w = (signs * alphas.permute(2, 0, 1).unsqueeze(-1)).sum(dim=0).reshape(self.out_features, -1)
            y = F.linear(xf, w)
        return self._add_bias(y).to(x.dtype)


register_method(BCQConfig, BCQLinear, PackedBCQLinear)
