"""Binary-code quantization (BCQ, quant.md §2): W_row ≈ Σ_i α_i b_i with b_i ∈ {−1, +1}."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import QuantLinear
from .common import check_group_size, column_groups, sign_pm1, straight_through
from .packing import packed_bits

BCQ_METHODS = ("greedy", "alternating")
MAX_BCQ_BITS = 4


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
    ``method``: "greedy" or "alternating" (``rounds`` refinement rounds; Xu et al. find 2 enough).
    Deployable bits = bits·out·ceil(in/8)·8 (one sign plane per bit) + 16·(out·n_groups·bits [α] + out [bias]).
    """

    OPTIONS = ("bits", "group_size", "method", "rounds")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 2,
        group_size: int | None = None,
        method: str = "greedy",
        rounds: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not 1 <= bits <= MAX_BCQ_BITS:
            raise ValueError(f"BCQ bits must be in [1, {MAX_BCQ_BITS}], got {bits}")
        if method not in BCQ_METHODS:
            raise ValueError(f"unknown BCQ method {method!r}; choices: {list(BCQ_METHODS)}")
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        check_group_size(in_features, group_size)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.bits = bits
        self.group_size = group_size
        self.method = method
        self.rounds = rounds

    @property
    def n_groups(self) -> int:
        return 1 if self.group_size is None else self.in_features // self.group_size

    def bcq_fit(self) -> tuple[Tensor, Tensor]:
        """Fit of the current latent weight: alpha (out, n_groups, bits), signs (out, n_groups, bits, group)."""
        return self._fit(self.weight.detach())

    def _fit(self, w: Tensor) -> tuple[Tensor, Tensor]:
        grouped = column_groups(w, self.group_size)
        if self.method == "greedy":
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
