"""SVCD: Sign Value Constraint Decomposition (the seed method, quant.md §1.2, cress.md §2.3-2.4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import QuantLinear
from .common import check_num_groups, fake_quant_per_token, row_group_mean, seed_act_rescale, sign_pm1, straight_through
from .packing import packed_bits

SVCD_INITS = ("constraint", "unconstrained", "svd", "signvalue")
WEIGHT_INITS = ("svd", "signvalue")  # computed from the (copied) weight
SVCD_ACT_QUANT = ("per_token", "seed", "none")


class SVCDLinear(QuantLinear):
    """y = Act(F.linear(LayerNorm(x) ⊙ g, sign(W_k − mean W_k), b)) ⊙ h.

    Weights: one mean per group of output rows (``num_groups`` groups of ``out // num_groups`` rows, the
    last group takes the remainder; the seed zeroed those rows). sign(0) = +1. The STE is taken w.r.t.
    ``W − mean``, so as in the seed the gradient reaching W is centred per group.

    ``act_quant``: "per_token" (8-bit absmax per token, dequantized, STE; a token never depends on other
    tokens), "seed" (the seed's whole-tensor rescale to ±128, for reproducing the paper only) or "none".

    ``init`` of g (in) and h (out): "constraint" U(±1/√in) (paper), "unconstrained" U(±1), or "svd"
    (rank-1 SVD of W: g = Vᵀ[0, :], h = U[:, 0]).

    Implementation note: g is folded into the LayerNorm affine (LN(x)·w·g + b·g) so the forward does
    not spend an extra full-size multiply; mathematically identical to LayerNorm(x) ⊙ g.

    Deployable bits = out·ceil(in/8)·8 (sign plane) + 16·(out [h] + 2·in [LayerNorm weight and bias, with g
    folded in: (γ ⊙ g, β ⊙ g)] + out [bias, if any]). No weight scale is kept: h absorbs it.
    """

    OPTIONS = ("num_groups", "init", "act_quant")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        num_groups: int = 1,
        init: str = "constraint",
        act_quant: str = "per_token",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if init not in SVCD_INITS:
            raise ValueError(f"unknown SVCD init {init!r}; choices: {list(SVCD_INITS)}")
        if act_quant not in SVCD_ACT_QUANT:
            raise ValueError(f"unknown SVCD act_quant {act_quant!r}; choices: {list(SVCD_ACT_QUANT)}")
        check_num_groups(num_groups, out_features)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.num_groups = num_groups
        self.init = init
        self.act_quant = act_quant
        self.norm = nn.LayerNorm(in_features, device=device, dtype=dtype)
        self.g = nn.Parameter(torch.empty(in_features, device=device, dtype=dtype))
        self.h = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self.reset_gh()

    def reset_gh(self) -> None:
        """(Re)initialise g and h according to ``init``."""
        if self.init in WEIGHT_INITS:
            self.init_from_weight()
            return
        bound = 1.0 / math.sqrt(self.in_features) if self.init == "constraint" else 1.0
        nn.init.uniform_(self.g, -bound, bound)
        nn.init.uniform_(self.h, -bound, bound)

    @torch.no_grad()
    def init_from_weight(self) -> None:
        """Weight-dependent inits.

        * ``svd`` (the paper's ablation): g, h = first right / left singular vectors of W, assigned by size.
        * ``signvalue``: W − α = sign(W − α) ⊙ |W − α|, and the non-negative |W − α| ≈ σ·u·vᵀ (its Perron vectors,
          both ≥ 0), so h = √σ·u, g = √σ·v make diag(h)·sign(W − α)·diag(g) the best sign-times-rank-1 fit of the
          trained W; α·Σx vanishes on the LayerNorm'd (zero-mean) input, and the bias is divided by h because it is
          added before the ⊙ h. The swapped layer then starts close to the trained one instead of from random g, h.
        """
        if self.init not in WEIGHT_INITS:
            return
        w = self.weight.float()
        if self.init == "svd":
            u, _, vh = torch.linalg.svd(w, full_matrices=False)
            self.g.copy_(vh[0, :])
            self.h.copy_(u[:, 0])
            return
        magnitude = (w - row_group_mean(w, self.num_groups)).abs()
        u, s, vh = torch.linalg.svd(magnitude, full_matrices=False)
        u0, v0 = u[:, 0], vh[0, :]
        if u0.sum() < 0:  # the Perron vectors of a non-negative matrix are one-signed; pick the positive pair
            u0, v0 = -u0, -v0
        scale = s[0].sqrt()
        h = u0 * scale
        # near-dead rows would get a tiny h and a huge b / h, which would dominate the per-token 8-bit scale
        h = h.clamp_min(0.1 * h.mean())
        self.h.copy_(h)
        self.g.copy_((v0 * scale).clamp_min(0))
        if self.bias is not None:
            self.bias.copy_(self.bias.float() / h)

    def binary_weight(self) -> Tensor:
        """±1 matrix sign(W_k − mean W_k) in W's dtype, with the (centred) straight-through gradient."""
        v = self.weight.float() - row_group_mean(self.weight, self.num_groups)
        return straight_through(sign_pm1, v).to(self.weight.dtype)

    def quantized_weight(self) -> Tensor:
        """The ±1 matrix used by F.linear (g and h scale inputs and outputs around it)."""
        return self.binary_weight()

    def forward(self, x: Tensor) -> Tensor:
        dt = x.dtype
        ln_w = self.norm.weight * self.g
        ln_b = self.norm.bias * self.g
        u = F.layer_norm(x, (self.in_features,), ln_w.to(dt), ln_b.to(dt), self.norm.eps)
        bias = self.bias.to(dt) if self.bias is not None else None
        z = F.linear(u, self.binary_weight().to(dt), bias)
        if self.act_quant == "per_token":
            z = fake_quant_per_token(z)
        elif self.act_quant == "seed":
            z = seed_act_rescale(z, self.num_groups)
        return z * self.h.to(dt)

    def deployable_bits(self) -> int:
        aux = self.out_features + 2 * self.in_features + self._bias_values()  # g lives in the folded LayerNorm
        return packed_bits(self.out_features, self.in_features, 1) + 16 * aux
