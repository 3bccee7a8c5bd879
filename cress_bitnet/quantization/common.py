"""Pieces shared by every quantizer: straight-through estimation, per-token fake quant, row groups.

Everything numeric here runs in fp32 and casts back, because scales such as 127/max|x| overflow
fp16 (127/1e-5 > 65504) and fp16 means lose precision over a few thousand features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

EPS = 1e-5


class _StraightThrough(torch.autograd.Function):
    """Forward ``fn(x, *args)``, backward identity to ``x``.

    A custom Function (rather than ``x + (q - x).detach()``) keeps the forward value exactly
    ``q`` (no float round-off from the add/sub pair) and saves two full-size elementwise ops.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        ctx.n_extra = len(args) + 1
        return fn(x, *args)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return (grad,) + (None,) * ctx.n_extra


def straight_through(fn: Callable[..., Tensor], x: Tensor, *args: Any) -> Tensor:
    """Apply a non-differentiable quantizer with a straight-through (identity) gradient to ``x``.

    ``fn`` must return a tensor of ``x``'s shape and dtype; it runs without autograd tracking.
    """
    return _StraightThrough.apply(x, fn, *args)


def sign_pm1(x: Tensor) -> Tensor:
    """Sign with sign(0) = +1, so every weight maps to one of exactly two levels (packable as 1 bit)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _per_token_quant(x: Tensor, bits: int, eps: float) -> Tensor:
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    # inf-norm is one fused reduction (no |x| temporary). No clamp to [-qmax-1, qmax] is needed:
    # |x|·qmax/max(max|x|, eps) <= qmax by construction, so round() already lands inside the range.
    scale = qmax / torch.linalg.vector_norm(xf, ord=float("inf"), dim=-1, keepdim=True).clamp_min_(eps)
    return (xf * scale).round_().div_(scale).to(x.dtype)


def fake_quant_per_token(x: Tensor, bits: int = 8, eps: float = EPS) -> Tensor:
    """Absmax ``bits``-bit fake quantization over the last (feature) dim, dequantized, STE gradient.

    The scale is per token, so a token's result never depends on other tokens or the batch layout
    (unlike the seed's whole-tensor rescale); this is what makes incremental decoding match training.
    """
    if bits < 2:
        raise ValueError(f"activation bits must be >= 2, got {bits}")
    return straight_through(_per_token_quant, x, bits, eps)


def seed_act_rescale(z: Tensor, num_groups: int = 1, qb: float = 128.0, eps: float = EPS) -> Tensor:
    """The SVCD seed's "activation quantization" (onebit-st ``BitLinear``, from kyegomez/BitNet's early BitLinear).

    Groups run over dim 0 (time in fairseq's (T, B, C)), one absmax per whole block, no rounding,
    fully differentiable. Rows past ``num_groups * (T // num_groups)`` stay zero, exactly as in the
    seed (so T < num_groups zeroes everything). Kept only to reproduce the paper's numbers.
    """
    zf = z.float()
    out = torch.zeros_like(zf)
    size = zf.shape[0] // num_groups
    for k in range(num_groups if size > 0 else 0):
        block = zf[k * size : (k + 1) * size]
        gamma = block.abs().amax()
        out[k * size : (k + 1) * size] = (block * (qb / (gamma + eps))).clamp(-qb + eps, qb - eps)
    return out.to(z.dtype)


def check_num_groups(num_groups: int, rows: int) -> None:
    """Reject group counts that would leave a group without rows."""
    if not 1 <= num_groups <= rows:
        raise ValueError(f"num_groups must be in [1, {rows}] (rows), got {num_groups}")


def row_group_ids(rows: int, num_groups: int, device: torch.device | None = None) -> Tensor:
    """Group index of every row: ``rows // num_groups`` rows per group, the last group takes the remainder."""
    check_num_groups(num_groups, rows)
    size = rows // num_groups
    return torch.arange(rows, device=device).div(size, rounding_mode="floor").clamp_(max=num_groups - 1)


def row_group_mean(t: Tensor, num_groups: int) -> Tensor:
    """Mean over all entries of each group of rows of a 2-D tensor, in fp32, broadcast back as (rows, 1).

    Computed as grouped sums of row sums, so it is vectorised and differentiable for any group sizes.
    """
    tf = t.float()
    if num_groups == 1:
        return tf.mean().expand(tf.shape[0], 1)
    ids = row_group_ids(tf.shape[0], num_groups, tf.device)
    sums = torch.zeros(num_groups, device=tf.device).index_add(0, ids, tf.sum(dim=1))
    counts = torch.bincount(ids, minlength=num_groups).to(tf.dtype) * tf.shape[1]
    return (sums / counts)[ids].unsqueeze(1)


def check_group_size(cols: int, group_size: int | None) -> int:
    """Resolve a column group size (None = whole row); it must divide ``cols`` so groups stay packable."""
    gs = cols if group_size is None else group_size
    if gs < 1 or cols % gs:
        raise ValueError(f"group_size must be a positive divisor of in_features={cols}, got {group_size}")
    return gs


def column_groups(t: Tensor, group_size: int | None) -> Tensor:
    """View (rows, cols) as (rows, n_groups, group_size) so per-group fits run over the last dim."""
    rows, cols = t.shape
    gs = check_group_size(cols, group_size)
    return t.reshape(rows, cols // gs, gs)
