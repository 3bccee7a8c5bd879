"""Packed-weight matmuls for inference: a JIT-built C++ CPU kernel with a pure-torch fallback.

``signed_matmul`` / ``ternary_matmul`` take activations (..., K) and weights packed by
:func:`~cress_bitnet.quantization.pack_signs` / :func:`~cress_bitnet.quantization.pack_ternary` (O, ceil(K/8 or 4))
and return (..., O). The kernel (``packed_matmul.cpp``) is compiled on first use with
``torch.utils.cpp_extension.load`` (needs ``ninja`` and a C++ compiler; cached under ``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) with ``-O3 -march=native``. The build name carries a hash of this CPU's
flags, so a shared cache never hands a binary to a CPU that lacks its instructions. Anything that stops the kernel
(no compiler, failed build, CUDA tensors, autograd through the input, ``CRESS_BITNET_NO_KERNEL=1``) routes to the
reference path, which unpacks to ±1 and calls ``F.linear``; the reason is logged once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

FORCE_FALLBACK_ENV = "CRESS_BITNET_NO_KERNEL"
"""Set to 1 to always use the torch reference path (tests, debugging, bit-exactness checks)."""
ARCH_ENV = "CRESS_BITNET_KERNEL_ARCH"
"""Value of -march for the build (default ``native``); e.g. ``haswell`` builds the AVX2 path for testing."""
SOURCE = Path(__file__).with_name("packed_matmul.cpp")


def _cpu_fingerprint() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return hashlib.sha1(f"{platform.machine()}|{flags}".encode()).hexdigest()[:10]


def _arch() -> str:
    return os.environ.get(ARCH_ENV, "native")


@functools.cache
def _build(arch: str) -> ModuleType | None:
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        logger.warning("cress_bitnet packed kernel: no C++ compiler found; using the torch fallback")
        return None
    try:
        from torch.utils.cpp_extension import load, verify_ninja_availability

        verify_ninja_availability()
        flags = ["-O3", f"-march={arch}", "-fopenmp"]
        name = f"cress_bitnet_packed_{arch.replace('-', '_')}_{_cpu_fingerprint()}"
        return load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # noqa: BLE001 - any build/import failure means: use the fallback
        logger.warning("cress_bitnet packed kernel unavailable (%s: %s); using the torch fallback",
                       type(err).__name__, str(err).strip().splitlines()[-1] if str(err).strip() else "")
        return None


def load_kernel() -> ModuleType | None:
    """The compiled extension, building it on first call (tens of seconds once, then cached); None if unavailable."""
    return _build(_arch())


def kernel_available() -> bool:
    """Whether the compiled kernel can be used (ignores the force-fallback variable)."""
    return load_kernel() is not None


def kernel_isa() -> str | None:
    """Instruction set the kernel was compiled for ("avx512", "avx2", "scalar"), or None without a kernel."""
    ext = load_kernel()
    return ext.isa() if ext is not None else None


def _use_kernel(x: Tensor) -> ModuleType | None:
    if os.environ.get(FORCE_FALLBACK_ENV, "0") not in ("", "0"):
        return None
    if x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
        return None
    return load_kernel()


def _check(x: Tensor, packed: Tensor, in_features: int, per_byte: int) -> None:
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features, expected in_features={in_features}")
    if packed.dim() != 2 or packed.shape[1] != -(-in_features // per_byte):
        raise ValueError(f"packed weight {tuple(packed.shape)} does not hold rows of {in_features} values")


def signed_matmul_reference(x: Tensor, packed: Tensor, in_features: int) -> Tensor:
    """Fallback: unpack the ±1 matrix in x's dtype and call F.linear (differentiable w.r.t. x, any device)."""
    from cress_bitnet.quantization.packing import unpack_signs  # late: the quantization package imports us

    return F.linear(x, unpack_signs(packed, in_features, dtype=x.dtype))


def ternary_matmul_reference(x: Tensor, packed: Tensor, in_features: int) -> Tensor:
    """Fallback for ternary codes: unpack to {-1, 0, +1} in x's dtype and call F.linear."""
    from cress_bitnet.quantization.packing import unpack_ternary

    return F.linear(x, unpack_ternary(packed, in_features, dtype=x.dtype))


def signed_matmul(x: Tensor, packed: Tensor, in_features: int) -> Tensor:
    """x (..., in) @ S.T for S ∈ {±1}^(out, in) packed by ``pack_signs``; returns (..., out) in x's dtype.

    The kernel accumulates in fp32 whatever x's dtype; the fallback computes in x's dtype.
    """
    _check(x, packed, in_features, 8)
    ext = _use_kernel(x)
    return signed_matmul_reference(x, packed, in_features) if ext is None else ext.signed_matmul(x, packed, in_features)


def ternary_matmul(x: Tensor, packed: Tensor, in_features: int) -> Tensor:
    """x (..., in) @ T.T for T ∈ {-1, 0, +1}^(out, in) packed by ``pack_ternary``; returns (..., out) in x's dtype."""
    _check(x, packed, in_features, 4)
    ext = _use_kernel(x)
    if ext is None:
        return ternary_matmul_reference(x, packed, in_features)
    return ext.ternary_matmul(x, packed, in_features)


def svcd_forward(
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    ln_eps: float,
    signs: Tensor,
    bias: Tensor | None,
    h: Tensor,
    per_token: bool,
    act_eps: float,
) -> Tensor | None:
    """Fused SVCD inference forward (LayerNorm, sign matmul, bias, per-token 8-bit rescale or none, ⊙ h) in one
    kernel call, or None when the kernel cannot run (the caller then uses its torch ops)."""
    ext = _use_kernel(x)
    if ext is None:
        return None
    _check(x, signs, ln_weight.numel(), 8)
    return ext.svcd_forward(x, ln_weight, ln_bias, ln_eps, signs, bias, h, per_token, act_eps)


__all__ = [
    "ARCH_ENV",
    "FORCE_FALLBACK_ENV",
    "kernel_available",
    "kernel_isa",
    "load_kernel",
    "signed_matmul",
    "signed_matmul_reference",
    "svcd_forward",
    "ternary_matmul",
    "ternary_matmul_reference",
]
