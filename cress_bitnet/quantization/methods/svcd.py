"""SVCD, Sign Value Constraint Decomposition: y = h ⊙ Act(sign(W − α)·(g ⊙ LN(x)) + b) — config, training layer
and packed inference layer.

The method of the onebit-st code (github.com/myaxxxxx/onebit-st, ``BitLinear``), built on the BitLinear of
kyegomez/BitNet; g and h play the role of the value vectors of OneBit (Xu et al., 2024, arXiv 2402.11295), with a
bounded ("constraint") init so that training in fp16 does not overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cress_bitnet.kernels import signed_matmul, svcd_forward

from ..base import PackedLinear, QuantLinear
from ..common import (
    EPS,
    check_num_groups,
    fake_quant_per_token,
    row_group_mean,
    seed_act_rescale,
    sign_pm1,
    straight_through,
)
from ..config import QuantConfig, option
from ..packing import pack_signs, packed_bits
from ..registry import register_method

SVCD_INITS = ("constraint", "unconstrained", "svd", "signvalue", "calibrated")
WEIGHT_INITS = ("svd", "signvalue", "calibrated")  # computed from the (copied) weight; calibrated starts as signvalue
CALIBRATION_STEPS = 25
"""Alternating least-squares sweeps of the calibrated init (each sweep never raises the fitted error)."""
MIN_H_FRACTION = 0.1
"""|h| >= this fraction of mean |h| (as signvalue): a near-zero h would make b = c / h huge and blow up the per-token
8-bit scale and fp16 range."""
SVCD_ACT_QUANT = ("per_token", "seed", "none")
LN_EPS = 1e-5
"""Epsilon of the layer's own LayerNorm (nn.LayerNorm's default), shared by the training and the packed form."""


@dataclass(frozen=True)
class SVCDConfig(QuantConfig):
    """``num_groups``: row groups for the weight mean α; ``init`` of g, h; ``act_quant`` of the matmul output."""

    method: ClassVar[str] = "svcd"
    num_groups: int = option(1, low=1, flag="quant_groups", help="weight groups over output rows")
    init: str = option("constraint", choices=SVCD_INITS, flag="quant_init", help="SVCD g/h init")
    act_quant: str = option("per_token", choices=SVCD_ACT_QUANT, flag="quant_act", help="activation quantizer")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init == "calibrated" and self.act_quant == "seed":
            raise ValueError("svcd: init 'calibrated' fits per-token outputs; the seed's whole-batch rescale makes a "
                             "layer's output scale depend on the batch, so it cannot be calibrated (use per_token)")

    def check_shape(self, in_features: int, out_features: int) -> None:
        check_num_groups(self.num_groups, out_features)


def _floor_h(h: Tensor) -> Tensor:
    floor = MIN_H_FRACTION * h.abs().mean().clamp_min(1e-12)
    return torch.where(h >= 0, h.clamp_min(floor), h.clamp_max(-floor))


def fit_signed_rank1(u: Tensor, s: Tensor, t: Tensor, g: Tensor, has_bias: bool,
                     steps: int = CALIBRATION_STEPS) -> tuple[Tensor, Tensor, Tensor]:
    """Alternating least squares for y_ni = h_i p_ni + c_i, p = U diag(g) Sᵀ (U: (N, in) LayerNorm'd inputs, S: the
    (out, in) ±1 matrix, T: (N, out) targets), from the start ``g``; returns (g, h, c).

    The squared error is linear in (h, c) for fixed g and linear in g for fixed (h, c), so each half is solved exactly:

    * (h, c) | g: one 1-D regression with intercept per output, h_i = cov(p_i, t_i) / var(p_i),
      c_i = mean(t_i) − h_i mean(p_i) (c = 0 without a bias); |h| floored at 0.1 · mean |h|;
    * g | (h, c): the normal equations G g = r with G = (UᵀU) ⊙ (Sᵀ diag(h²) S) (Hadamard product, in × in) and
      r = colsum(U ⊙ ((T − c) diag(h) S)), solved with a tiny ridge (1e-6 of G's mean diagonal).

    Each half-step cannot raise the error (the floor aside).
    """
    t_mean = t.mean(0)
    gram_u = u.T @ u

    def fit_hc(g: Tensor) -> tuple[Tensor, Tensor]:
        p = (u * g) @ s.T
        pc = p - p.mean(0)
        h = _floor_h((pc * (t - t_mean)).sum(0) / (pc * pc).sum(0).clamp_min(1e-30))
        c = t_mean - h * p.mean(0) if has_bias else torch.zeros_like(h)
        return h, c

    h, c = fit_hc(g)
    for _ in range(steps):
        gram = gram_u * ((s * (h * h)[:, None]).T @ s)
        rhs = (u * (((t - c) * h) @ s)).sum(0)
        ridge = 1e-6 * gram.diagonal().mean().clamp_min(1e-30)
        g = torch.linalg.solve(gram + ridge * torch.eye(u.shape[1], dtype=gram.dtype), rhs)
        h, c = fit_hc(g)
    return g, h, c


def match_output_spread(u: Tensor, s: Tensor, t: Tensor, g: Tensor, h: Tensor, has_bias: bool) -> tuple[Tensor, Tensor]:
    """Rescale h per output so that the outputs' standard deviation over the N inputs equals the targets' (undoing
    the least-squares shrinkage; signs of h kept), then refit the intercept c; returns (h, c)."""
    p = (u * g) @ s.T
    spread = (p * h).std(0).clamp_min(1e-30)
    h = _floor_h(h * t.std(0) / spread)
    c = t.mean(0) - h * p.mean(0) if has_bias else torch.zeros_like(h)
    return h, c


class SVCDLinear(QuantLinear):
    """y = Act(F.linear(LayerNorm(x) ⊙ g, sign(W_k − mean W_k), b)) ⊙ h.

    Weights: one mean per group of output rows (``num_groups`` groups of ``out // num_groups`` rows, the
    last group takes the remainder; the seed zeroed those rows). sign(0) = +1. The STE is taken w.r.t.
    ``W − mean``, so as in the seed the gradient reaching W is centred per group.

    ``act_quant``: "per_token" (8-bit absmax per token, dequantized, STE; a token never depends on other
    tokens), "seed" (the seed's whole-tensor rescale to ±128, for reproducing the paper only) or "none".

    ``init`` of g (in) and h (out): "constraint" U(±1/√in) (paper), "unconstrained" U(±1), "svd"
    (rank-1 SVD of W: g = Vᵀ[0, :], h = U[:, 0]), "signvalue" (see :meth:`init_from_weight`) or "calibrated"
    (signvalue, then fitted to the trained layer's outputs on real activations: :meth:`init_from_data`).

    Implementation note: g is folded into the LayerNorm affine (LN(x)·w·g + b·g) so the forward does
    not spend an extra full-size multiply; mathematically identical to LayerNorm(x) ⊙ g.

    Deployable bits = out·ceil(in/8)·8 (sign plane) + 16·(out [h] + 2·in [LayerNorm weight and bias, with g
    folded in: (γ ⊙ g, β ⊙ g)] + out [bias, if any]). No weight scale is kept: h absorbs it.
    """

    def build(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        in_features, out_features = self.in_features, self.out_features
        self.norm = nn.LayerNorm(in_features, eps=LN_EPS, device=device, dtype=dtype)
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
          added before the ⊙ h. The swapped layer then starts close to the trained one instead of from random g, h —
          but only when the layer's input is already LayerNorm'd (zero mean, unit variance per token: q/k/v and fc1
          fed by a LayerNorm). On raw inputs (fc2 after ReLU, attention output projections) the layer's own LayerNorm
          removes each token's mean and scale, so the start is far from the trained layer (relative output error
          0.9 after ReLU, 1.8 for inputs of scale 0.3, against 0.6 — the sign-fit limit — on normalised inputs).
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

    @classmethod
    def needs_calibration(cls, config: QuantConfig) -> bool:
        return config.init == "calibrated"

    @torch.no_grad()
    def init_from_data(self, inputs: Tensor, targets: Tensor) -> None:
        """``calibrated``: fit g, h and b so that the layer reproduces the trained layer's outputs ``targets`` (N, out)
        on its real inputs ``inputs`` (N, in), the sign matrix S = sign(W − α) and the LayerNorm affine kept.

        1. :func:`fit_signed_rank1`: alternating least squares for (g, h, c = h ⊙ b), starting from signvalue.
        2. :func:`match_output_spread`: least squares with an imperfect predictor shrinks its outputs toward their mean
           (regression dilution: at relative error e the fitted outputs keep only √(1 − e²) of the targets' spread,
           ~0.8 for a 1-bit layer). Shrunk q and k flatten every attention distribution and shrunk residual
           branches compound over layers, so h is rescaled per output to give the outputs the targets' spread (c
           refitted). Measured on the demo's FP model, greedy decoding with no fine-tuning: 1-bit cross-attention
           scored 18.4 BLEU with the plain least-squares fit, 34.3 with the spread matched (signvalue 31.5); the
           whole decoder 8.0 → 14.0 (signvalue 0.2).

        fp16-safe bounds: |h| is kept ≥ 0.1 · mean |h| (so b = c / h stays bounded) and (g, h) are rescaled so that
        p = U diag(g) Sᵀ has unit RMS (the split of scale between g and h is free). The layer's forward (with its
        activation quantizer) is then compared with the start and the better of the two is kept, so the output error
        on these inputs is never above signvalue's. Deterministic (no sampling). Unlike signvalue this also
        reproduces layers fed with raw inputs (fc2 after ReLU, attention out_proj), as far as the layer's own
        LayerNorm (which removes each token's mean and scale) allows.
        """
        x, t = inputs.reshape(-1, self.in_features).double(), targets.reshape(-1, self.out_features).double()
        if x.shape[0] != t.shape[0] or x.shape[0] < 2:
            raise ValueError(f"calibration needs >= 2 matching (input, target) rows, got {x.shape[0]}, {t.shape[0]}")
        if not bool(torch.isfinite(x).all() & torch.isfinite(t).all()):
            raise ValueError("calibration inputs or targets hold NaN/inf")
        start = {n: p.detach().clone() for n, p in (("g", self.g), ("h", self.h), ("bias", self.bias)) if p is not None}
        u = F.layer_norm(x, (self.in_features,), self.norm.weight.double(), self.norm.bias.double(), self.norm.eps)
        s = sign_pm1(self.weight.double() - row_group_mean(self.weight, self.num_groups).double())
        has_bias = self.bias is not None
        g, h, c = fit_signed_rank1(u, s, t, self.g.double().clone(), has_bias)
        h, c = match_output_spread(u, s, t, g, h, has_bias)
        rms = ((u * g) @ s.T).pow(2).mean().sqrt().clamp_min(1e-12)
        g, h = g / rms, h * rms

        def error() -> float:
            return float((self(inputs.to(self.weight.dtype)).double().reshape_as(t) - t).norm())

        before = error()
        if bool(torch.isfinite(g).all() & torch.isfinite(h).all() & torch.isfinite(c / h).all()):
            self.g.copy_(g)
            self.h.copy_(h)
            if has_bias:
                self.bias.copy_(c / h)
            if error() <= before:
                return
        for name, value in start.items():  # the fit did not help (or was not finite): keep the start
            getattr(self, name).copy_(value)

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


class PackedSVCDLinear(PackedLinear):
    """SVCD at inference: y = Act(signs · LN'(x) + b) ⊙ h with g folded into the LayerNorm affine (LN' = LN ⊙ g).

    With one activation group the seed's per-tensor weight scale cancels, so sign bits, folded LN, b and h are all
    that is stored. Buffers: ``signs`` (out, ⌈in/8⌉) uint8; ``ln_weight``, ``ln_bias`` (in), ``h``, ``bias`` (out) in
    fp16 — exactly ``SVCDLinear.deployable_bits()``.
    """

    def build(self) -> None:
        self.register_buffer("signs", torch.zeros(self.out_features, -(-self.in_features // 8), dtype=torch.uint8))
        self._aux("ln_weight", self.in_features)
        self._aux("ln_bias", self.in_features)
        self._aux("h", self.out_features)

    def fill(self, layer: SVCDLinear) -> None:
        self.signs.copy_(pack_signs(layer.binary_weight()))
        g = layer.g.float()
        self.ln_weight.copy_(layer.norm.weight.float() * g)
        self.ln_bias.copy_(layer.norm.bias.float() * g)
        self.h.copy_(layer.h)

    def forward(self, x: Tensor) -> Tensor:
        act = self.config.act_quant
        if act != "seed":
            b = self._buffers  # read directly: nn.Module.__getattr__ costs ~0.7 us a buffer, 5 of them ~ F.linear
            fused = svcd_forward(x, b["ln_weight"], b["ln_bias"], LN_EPS, b["signs"], b.get("bias"), b["h"],
                                 act == "per_token", EPS, self.layout)
            if fused is not None:
                return fused
        u = F.layer_norm(x.float(), (self.in_features,), self.ln_weight.float(), self.ln_bias.float(), LN_EPS)
        z = self._add_bias(signed_matmul(u, self.signs, self.in_features))
        if act == "per_token":
            z = fake_quant_per_token(z)
        elif act == "seed":
            z = seed_act_rescale(z, self.config.num_groups)
        return (z * self.h.float()).to(x.dtype)


register_method(SVCDConfig, SVCDLinear, PackedSVCDLinear)
