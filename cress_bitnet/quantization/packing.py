"""Bit packing for the deployable form of 1-bit and ternary weights.

Conventions (an exporter and a kernel rely on them):
- packing runs along the LAST dim; each row is padded on its own to whole bytes;
- signs: element ``>= 0`` -> bit 1 -> +1, element ``< 0`` -> bit 0 -> -1 (sign(0) = +1, as in
  :func:`~cress_bitnet.quantization.common.sign_pm1`), 8 values per byte;
- ternary: code 0 -> 0, 1 -> +1, 2 -> -1 (3 unused), 2 bits per value, 4 values per byte;
- little-endian inside a byte: value j of byte k is element ``k * per_byte + j`` at bits ``j * width``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def packed_bits(rows: int, cols: int, bits_per_value: int) -> int:
    """Storage in bits of a (rows, cols) plane with every row padded to whole bytes."""
    return rows * math.ceil(cols * bits_per_value / 8) * 8


def _pack(codes: Tensor, width: int) -> Tensor:
    per_byte = 8 // width
    n = codes.shape[-1]
    pad = (-n) % per_byte
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    codes = codes.reshape(*codes.shape[:-1], -1, per_byte).to(torch.int32)
    shifts = torch.arange(0, 8, width, dtype=torch.int32, device=codes.device)
    return (codes << shifts).sum(dim=-1).to(torch.uint8)


def _unpack(packed: Tensor, n: int, width: int) -> Tensor:
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed tensor must be uint8, got {packed.dtype}")
    per_byte = 8 // width
    nbytes = packed.shape[-1]
    if not (nbytes - 1) * per_byte < n <= nbytes * per_byte:
        raise ValueError(f"n={n} does not fit {nbytes} packed bytes of {per_byte} values each")
    shifts = torch.arange(0, 8, width, dtype=torch.int32, device=packed.device)
    codes = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << width) - 1)
    return codes.reshape(*packed.shape[:-1], nbytes * per_byte)[..., :n]


def pack_signs(t: Tensor) -> Tensor:
    """Pack signs of ``t`` (>= 0 -> 1) into uint8 of shape (*t.shape[:-1], ceil(n/8))."""
    return _pack((t >= 0).to(torch.int32), 1)


def unpack_signs(packed: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_signs`: a ±1 tensor (*, n) of ``dtype``."""
    return (_unpack(packed, n, 1) * 2 - 1).to(dtype)


def pack_ternary(t: Tensor) -> Tensor:
    """Pack a {-1, 0, +1} tensor at 2 bits per value into uint8 of shape (*t.shape[:-1], ceil(n/4)).

    Raises ValueError on any other value, since silently packing sign(t) would lose information.
    """
    if not bool(((t == 0) | (t == 1) | (t == -1)).all()):
        raise ValueError("pack_ternary expects values in {-1, 0, +1}")
    codes = torch.where(t > 0, 1, torch.where(t < 0, 2, 0)).to(torch.int32)
    return _pack(codes, 2)


def unpack_ternary(packed: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_ternary`: a {-1, 0, +1} tensor (*, n) of ``dtype``."""
    codes = _unpack(packed, n, 2)
    if bool((codes == 3).any()):
        raise ValueError("invalid ternary code 3 in packed data")
    lut = torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=dtype, device=packed.device)
    return lut[codes]


def pack_codes(codes: Tensor, width: int) -> Tensor:
    """Pack non-negative integer codes of ``width`` bits (1-16) as a little-endian bit stream along the last dim.

    Value j of a row occupies bits ``j·width … j·width + width − 1`` of the row's stream; each row is padded to whole
    bytes, so a (rows, n) tensor takes rows·⌈n·width/8⌉ bytes — :func:`packed_bits` exactly, for any width.
    """
    if not 1 <= width <= 16:
        raise ValueError(f"code width must be in [1, 16], got {width}")
    c = codes.to(torch.int64)
    if bool((c < 0).any()) or bool((c >= (1 << width)).any()):
        raise ValueError(f"codes must lie in [0, {(1 << width) - 1}] for width {width}")
    shifts = torch.arange(width, dtype=torch.int64, device=c.device)
    bits = ((c.unsqueeze(-1) >> shifts) & 1).reshape(*c.shape[:-1], c.shape[-1] * width)
    return _pack(bits.to(torch.int32), 1)


def unpack_codes(packed: Tensor, n: int, width: int) -> Tensor:
    """Inverse of :func:`pack_codes`: int64 codes of shape (*, n)."""
    bits = _unpack(packed, n * width, 1).to(torch.int64).reshape(*packed.shape[:-1], n, width)
    shifts = torch.arange(width, dtype=torch.int64, device=packed.device)
    return (bits << shifts).sum(dim=-1)
