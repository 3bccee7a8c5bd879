"""Ternary SVD, W ≈ U diag(s) V with U, V ∈ {−1, 0, +1}: config, training and packed layers.

Chen et al. 2023 (arXiv 2308.07641), reference package ``tern_svd``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from cress_bitnet.kernels import ternary_matmul

from ..base import PackedLinear, QuantLinear
from ..common import sign_pm1
from ..config import QuantConfig, option
from ..packing import pack_ternary, packed_bits
from ..registry import register_method

# Above this smaller dimension the top singular pairs come from svd_lowrank: a full SVD per deflation
# step is what makes TSVD unaffordable during training (the reference switches at 1024² entries).
LOWRANK_MIN_DIM = 256


@dataclass(frozen=True)
class TSVDConfig(QuantConfig):
    """Deflation stops at ``tolerance`` × the top singular value or at ``max_rank``; ``cos_thresh`` of the ternary
    policy; ``steps`` sets the stride (singular pairs per deflation step)."""

    method: ClassVar[str] = "tsvd"
    tolerance: float = option(5e-2, low=0.0)
    cos_thresh: float = option(0.8386, low=-1.0, high=1.0)
    max_rank: int | None = option(None, low=1)
    steps: int = option(20, low=1)


def ternary_policy(a: Tensor, cos_thresh: float) -> Tensor:
    """Ternarise each row of ``a``: keep the fewest largest-|a| entries whose ternary vector has cosine
    ≥ ``cos_thresh`` with the row (else the best cosine), with sign(≥0) = +1; ``cos_thresh <= 0`` -> ±1."""
    if cos_thresh <= 0:
        return sign_pm1(a)
    n = a.shape[-1]
    mag, order = a.abs().sort(dim=-1, descending=True)
    ks = torch.arange(1, n + 1, device=a.device, dtype=mag.dtype)
    score = mag.cumsum(dim=-1) / (a.norm(dim=-1, keepdim=True).clamp_min(1e-30) * ks.sqrt())
    ok = score >= cos_thresh
    first = torch.where(ok.any(dim=-1), ok.to(torch.uint8).argmax(dim=-1), score.argmax(dim=-1))
    keep_sorted = torch.arange(n, device=a.device) <= first.unsqueeze(-1)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return sign_pm1(a) * keep


def _top_singular(r: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets (U (m, k), S (k), Vh (k, n)) of r."""
    if min(r.shape) > LOWRANK_MIN_DIM:
        q = min(min(r.shape), 5 * k)
        u, s, v = torch.svd_lowrank(r, q=q, niter=2)
        return u[:, :k], s[:k], v[:, :k].T
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    return u[:, :k], s[:k], vh[:k]


def solve_singular_values(a: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """s = argmin ‖U diag(s) V − A‖_F via the Hadamard normal equations (UᵀU ⊙ VVᵀ) s = diag(Uᵀ A Vᵀ)."""
    gram = (u.T @ u) * (v @ v.T)
    rhs = ((u.T @ a) * v).sum(dim=1)
    damp = 1e-5 * gram.pow(2).mean().sqrt()
    gram = gram + damp * torch.eye(gram.shape[0], device=a.device, dtype=a.dtype)
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return torch.linalg.lstsq(gram, rhs.unsqueeze(1)).solution.squeeze(1)
    return torch.cholesky_solve(rhs.unsqueeze(1), chol).squeeze(1)


def ternary_decomposition(
    a: Tensor,
    tolerance: float = 5e-2,
    cos_thresh: float = 0.8386,
    max_rank: int | None = None,
    stride: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy ternary deflation of a 2-D matrix; returns U (m, r), s (r), V (r, n) in fp32.

    Each step ternarises the residual's top ``stride`` singular pairs, re-solves all s jointly and
    stops once the residual's top singular value is below ``tolerance`` times A's, or at ``max_rank``
    (default min(m, n), to bound the cost).
    """
    af = a.detach().float()
    transposed = af.shape[0] > af.shape[1]
    if transposed:
        af = af.T
    m, n = af.shape
    cap = min(m, n) if max_rank is None else max_rank
    u = af.new_zeros(m, 0)
    v = af.new_zeros(0, n)
    s = af.new_zeros(0)
    resid = af
    top = None
    while u.shape[1] < cap:
        k = min(stride, cap - u.shape[1])
        uk, sk, vk = _top_singular(resid, k)
        if top is None:
            top = float(sk[0])
        if top == 0.0 or float(sk[0]) < tolerance * top:
            break
        u = torch.cat([u, ternary_policy(uk.T, cos_thresh).T], dim=1)
        v = torch.cat([v, ternary_policy(vk, cos_thresh)], dim=0)
        s = solve_singular_values(af, u, v)
        resid = af - (u * s) @ v
    if transposed:
        return v.T.contiguous(), s, u.T.contiguous()
    return u, s, v


class _FactoredLinear(torch.autograd.Function):
    """Forward U(s ⊙ (V x)) + b; backward: exact gradient to x, straight-through gradient to W."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, u: Tensor, s: Tensor, v: Tensor) -> Tensor:
        dt = x.dtype
        u, s, v = u.to(dt), s.to(dt), v.to(dt)
        ctx.save_for_backward(x, u, s, v)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        # matmul (not F.linear) so the output is not a view: fairseq scales attention queries in place.
        y = torch.matmul(torch.matmul(x, v.t()) * s, u.t())
        return y + bias.to(dt) if bias is not None else y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, u, s, v = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = ((gy @ u) * s) @ v
        g2 = gy.reshape(-1, gy.shape[-1])
        if ctx.needs_input_grad[1]:
            gw = (g2.T @ x.reshape(-1, x.shape[-1])).to(ctx.weight_dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            gb = g2.sum(dim=0).to(ctx.bias_dtype)
        return gx, gw, gb, None, None, None


class TSVDLinear(QuantLinear):
    """Linear whose forward is U(s ⊙ (V x)) + b with a ternary decomposition of the latent W.

    The decomposition is recomputed lazily whenever W differs from the copy it was computed from
    (a cached-copy comparison also catches fairseq's ``p.data.copy_`` updates, which bypass
    ``_version``). Gradients reach W straight-through. stride = max(1, int(m·n/(m+n)/steps)).
    Deployable bits = out·ceil(r/4)·8 (U, 2-bit, row-major) + r·ceil(in/4)·8 (V) + 16·(r [s] + out [bias]).
    """

    def build(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        n_in, n_out = self.in_features, self.out_features
        self.stride = max(1, int(n_in * n_out / (n_in + n_out) / self.config.steps))
        self.register_buffer("u", torch.zeros(n_out, 0, device=device), persistent=False)
        self.register_buffer("s", torch.zeros(0, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(0, n_in, device=device), persistent=False)
        self._source: Tensor | None = None
        self.decompositions = 0

    def decompose(self) -> tuple[Tensor, Tensor, Tensor]:
        """Current (U, s, V), recomputed only if the latent weight changed."""
        w = self.weight.detach()
        src = self._source
        if src is None or src.shape != w.shape or src.device != w.device or not torch.equal(src, w):
            self.u, self.s, self.v = ternary_decomposition(
                w, self.tolerance, self.cos_thresh, self.max_rank, self.stride
            )
            self._source = w.clone()
            self.decompositions += 1
        return self.u, self.s, self.v

    @property
    def rank(self) -> int:
        return self.decompose()[1].numel()

    def quantized_weight(self) -> Tensor:
        u, s, v = self.decompose()
        return ((u * s) @ v).to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        u, s, v = self.decompose()
        return _FactoredLinear.apply(x, self.weight, self.bias, u, s, v)

    def deployable_bits(self) -> int:
        r = self.rank
        planes = packed_bits(self.out_features, r, 2) + packed_bits(r, self.in_features, 2)
        return planes + 16 * (r + self._bias_values())



class PackedTSVDLinear(PackedLinear):
    """Ternary SVD at inference: y = U (s ⊙ (V x)) + b, two add-only ternary matmuls with an fp16 s in between.

    Buffers: ``u_codes`` (out, ⌈r/4⌉), ``v_codes`` (r, ⌈in/4⌉) 2-bit ternary, ``s`` (r) fp16 — matches
    ``deployable_bits()``. The rank r is data-dependent, so a zero-filled layer has r = 0 and
    :meth:`_load_from_state_dict` adopts the rank of the state dict it receives.
    """

    def build(self, rank: int = 0) -> None:
        self.register_buffer("u_codes", torch.zeros(self.out_features, -(-rank // 4), dtype=torch.uint8))
        self.register_buffer("v_codes", torch.zeros(rank, -(-self.in_features // 4), dtype=torch.uint8))
        self._aux("s", rank)

    @property
    def rank(self) -> int:
        return self.s.numel()

    def fill(self, layer: TSVDLinear) -> None:
        u, s, v = layer.decompose()
        self.build(s.numel())
        self.u_codes.copy_(pack_ternary(u))
        self.v_codes.copy_(pack_ternary(v))
        self.s.copy_(s)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        s = state_dict.get(prefix + "s")
        if isinstance(s, Tensor) and s.dim() == 1 and s.numel() != self.rank:
            device = self.s.device
            self.build(s.numel())
            self.to(device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if self.rank == 0:
            y = xf.new_zeros(*xf.shape[:-1], self.out_features)
        else:
            t = ternary_matmul(xf, self.v_codes, self.in_features) * self.s.float()
            y = ternary_matmul(t, self.u_codes, self.rank)
        return self._add_bias(y).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


register_method(TSVDConfig, TSVDLinear, PackedTSVDLinear)
