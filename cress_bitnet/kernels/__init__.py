"""Packed-weight matmuls for inference: a JIT-built C++ CPU kernel with a pure-torch fallback.

``signed_matmul`` / ``ternary_matmul`` take activations (..., K) and weights packed by
:func:`~cress_bitnet.quantization.pack_signs` / :func:`~cress_bitnet.quantization.pack_ternary` (O, ceil(K/8 or 4))
and return (..., O). The kernel (``packed_matmul.cpp``) is compiled on first use with
``torch.utils.cpp_extension.load`` (needs ``ninja`` and a C++ compiler; cached under ``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) with ``-O3 -march=native``. The build name carries a hash of this CPU's
flags, so a shared cache never hands a binary to a CPU that lacks its instructions. Anything that stops the kernel
(no compiler, failed build, CUDA tensors, autograd through the input, ``CRESS_BITNET_NO_KERNEL=1``) routes to the
reference path, which unpacks to ±1 and calls ``F.linear``; the reason is logged once.

On AVX-512 and AVX2 builds the kernel runs a lookup-table matmul (T-MAC style, see ``packed_matmul.cpp``) on a
prepacked copy of the weight (16 output rows interleaved byte by byte). The copy is made on first use and cached per
weight tensor (keyed on its storage, view geometry and version counter, so in-place updates such as
``load_state_dict`` invalidate it, and dropped when the tensor is freed): the packed bytes are held twice, which is
still 16x less than fp16.
Packed layers instead hold their own :class:`PrepackedLayout`, whose validity check is two attribute reads: at
decoder sizes the cache's key alone costs a sizeable share of a whole layer's forward.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import weakref
from collections import OrderedDict
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


# The two variables are read on every call (tests and users flip them at run time). os.environ.get encodes the key
# and decodes the value each time (~0.6 us, a tenth of a batch-1 decoder layer's forward), so where CPython exposes
# the raw dict behind os.environ (kept in step by os.environ's own setters) the pre-encoded keys are looked up there.
_RAW_ENV: dict | None = getattr(os.environ, "_data", None)
_RAW_KEYS = {name: os.environ.encodekey(name) for name in (FORCE_FALLBACK_ENV, ARCH_ENV)} if _RAW_ENV is not None \
    else {}


def _env(name: str, default: str) -> str:
    if _RAW_ENV is None:
        return os.environ.get(name, default)
    raw = _RAW_ENV.get(_RAW_KEYS[name])
    return default if raw is None else os.environ.decodevalue(raw)


def _arch() -> str:
    return _env(ARCH_ENV, "native")


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


def warm_kernel() -> None:
    """Build or load the kernel now unless ``CRESS_BITNET_NO_KERNEL`` is set, so that its one-time cost (a 30-40 s
    build once per machine, ~0.1 s to load after) lands where the caller wants it: in model loading, not in the
    first decoding step."""
    if _env(FORCE_FALLBACK_ENV, "0") in ("", "0"):
        load_kernel()


def kernel_available() -> bool:
    """Whether the compiled kernel can be used (ignores the force-fallback variable)."""
    return load_kernel() is not None


def kernel_isa() -> str | None:
    """Instruction set the kernel was compiled for ("avx512", "avx2", "scalar"), or None without a kernel."""
    ext = load_kernel()
    return ext.isa() if ext is not None else None


def _use_kernel(x: Tensor) -> ModuleType | None:
    if _env(FORCE_FALLBACK_ENV, "0") not in ("", "0"):
        return None
    if not x.is_cpu or (x.requires_grad and torch.is_grad_enabled()):
        return None
    return _build(_arch())


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


PREPACK_CACHE_BYTES = 1 << 30
"""Upper bound on the bytes of cached prepacked weights; least recently used entries go first."""
_prepack_cache: OrderedDict[tuple, Tensor] = OrderedDict()
_prepack_bytes = 0


def _drop(key: tuple) -> None:
    global _prepack_bytes
    pre = _prepack_cache.pop(key, None)
    if pre is not None:
        _prepack_bytes -= pre.numel()


@functools.cache
def _log_inference_weight() -> None:
    logger.info("cress_bitnet packed kernel: a packed weight is an inference tensor (created under "
                "torch.inference_mode), which keeps no version counter, so it runs the slower row-major kernel; "
                "build the model outside inference_mode to get the lookup-table kernel")


@functools.cache
def _lut_supported(ext: ModuleType) -> bool:
    return bool(ext.lut_supported())


def _can_prepack(ext: ModuleType, packed: Tensor) -> bool:
    """Whether a prepacked layout of ``packed`` is worth making: the build has the LUT kernel and the tensor can be
    tracked (inference tensors keep no version counter, so a cached layout could outlive an in-place change)."""
    if not _lut_supported(ext):
        return False
    if packed.is_inference():
        _log_inference_weight()
        return False
    return True


def prepacked(ext: ModuleType, packed: Tensor) -> Tensor | None:
    """The LUT layout of ``packed`` (rows interleaved by 16) from the cache, built on a miss; None where
    :func:`_can_prepack` says no."""
    global _prepack_bytes
    if not _can_prepack(ext, packed):
        return None
    owner = packed._base
    if owner is None:
        owner = packed
    key = (id(owner), packed.data_ptr(), packed.shape, packed.stride(), packed._version)
    pre = _prepack_cache.get(key)
    if pre is not None:
        _prepack_cache.move_to_end(key)
        return pre
    pre = ext.prepack(packed)
    _prepack_cache[key] = pre
    _prepack_bytes += pre.numel()
    # The entry dies with the tensor that owns the storage, so a later tensor at the same address never hits it.
    weakref.finalize(owner, _drop, key)
    while _prepack_bytes > PREPACK_CACHE_BYTES and len(_prepack_cache) > 1:
        _drop(next(iter(_prepack_cache)))
    return pre


class PrepackedLayout:
    """One packed layer's LUT layout of one packed buffer, made on first use and remade when the layer's buffer is
    replaced (``.to()``, ``register_buffer``) or changed in place (``load_state_dict``: its version counter moves).

    Unlike the shared cache of :func:`prepacked` it costs nothing to look up, and it lives as long as the layer.
    """

    __slots__ = ("_source", "_version", "_layout")

    def __init__(self) -> None:
        self._source: Tensor | None = None
        self._version = -1
        self._layout: Tensor | None = None

    def get(self, ext: ModuleType, packed: Tensor) -> Tensor | None:
        """The layout of ``packed``, or None where the LUT kernel cannot use one (as :func:`prepacked`)."""
        if packed is self._source and packed._version == self._version:
            return self._layout
        if not _can_prepack(ext, packed):
            return None
        self._source, self._version, self._layout = packed, packed._version, ext.prepack(packed)
        return self._layout

    def __reduce__(self) -> tuple[type, tuple]:  # a copied or pickled layer remakes its layout from its own buffer
        return PrepackedLayout, ()


def _layout(ext: ModuleType, packed: Tensor, layout: PrepackedLayout | None) -> Tensor | None:
    return layout.get(ext, packed) if layout is not None else prepacked(ext, packed)


def clear_prepack_cache() -> None:
    """Forget every cached prepacked weight (tests, or to free the memory)."""
    for key in list(_prepack_cache):
        _drop(key)


def signed_matmul(x: Tensor, packed: Tensor, in_features: int) -> Tensor:
    """x (..., in) @ S.T for S ∈ {±1}^(out, in) packed by ``pack_signs``; returns (..., out) in x's dtype.

    The kernel accumulates in fp32 whatever x's dtype; the fallback computes in x's dtype.
    """
    _check(x, packed, in_features, 8)
    ext = _use_kernel(x)
    if ext is None:
        return signed_matmul_reference(x, packed, in_features)
    return ext.signed_matmul(x, packed, in_features, prepacked(ext, packed))


def ternary_matmul(x: Tensor, packed: Tensor, in_features: int) -> Tensor:
    """x (..., in) @ T.T for T ∈ {-1, 0, +1}^(out, in) packed by ``pack_ternary``; returns (..., out) in x's dtype."""
    _check(x, packed, in_features, 4)
    ext = _use_kernel(x)
    if ext is None:
        return ternary_matmul_reference(x, packed, in_features)
    return ext.ternary_matmul(x, packed, in_features, prepacked(ext, packed))


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
    layout: PrepackedLayout | None = None,
) -> Tensor | None:
    """Fused SVCD inference forward (LayerNorm, sign matmul, bias, per-token 8-bit rescale or none, ⊙ h) in one
    kernel call, or None when the kernel cannot run (the caller then uses its torch ops). ``layout``: the calling
    layer's own prepacked weight (else the shared cache is used). Shapes are checked in the kernel (ValueError)."""
    ext = _use_kernel(x)
    if ext is None:
        return None
    return ext.svcd_forward(x, ln_weight, ln_bias, ln_eps, signs, bias, h, per_token, act_eps,
                            _layout(ext, signs, layout))


def normquant_forward(
    x: Tensor,
    rms: bool,
    norm_eps: float,
    act_bits: int,
    act_eps: float,
    packed: Tensor,
    ternary: bool,
    scales: Tensor,
    bias: Tensor | None,
    layout: PrepackedLayout | None = None,
) -> Tensor | None:
    """Fused BitNet b1 (``ternary=False``: sign bits, LayerNorm) / b1.58 (``ternary=True``: ternary codes, RMSNorm)
    inference forward, or None when the kernel cannot run (the caller then uses its torch ops).

    y = (W_packed · Q(N(x))) ⊙ scales[group(o)] + bias, where N is LayerNorm without affine (``rms=False``) or
    RMSNorm, Q the per-token absmax ``act_bits`` fake quantizer of ``common.fake_quant_per_token`` (0: none), and
    output rows fall into ``scales.numel()`` groups as in ``common.row_group_ids``. Returns x's dtype. ``layout`` as
    in :func:`svcd_forward`.
    """
    ext = _use_kernel(x)
    if ext is None:
        return None
    return ext.normquant_forward(x, rms, norm_eps, act_bits, act_eps, packed, ternary, scales, bias,
                                 _layout(ext, packed, layout))


__all__ = [
    "ARCH_ENV",
    "FORCE_FALLBACK_ENV",
    "kernel_available",
    "kernel_isa",
    "clear_prepack_cache",
    "load_kernel",
    "normquant_forward",
    "PrepackedLayout",
    "prepacked",
    "signed_matmul",
    "signed_matmul_reference",
    "svcd_forward",
    "ternary_matmul",
    "ternary_matmul_reference",
    "warm_kernel",
]
