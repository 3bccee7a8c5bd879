"""Packed inference forms of the quantized linears: packed weight codes plus fp16 scales, no latent fp weight.

Each ``Packed*Linear`` holds only buffers (uint8 sign planes / 2-bit ternary codes / int8 codes, and small fp16
vectors) and reproduces its training layer's eval-mode forward. They are built in one of two ways:

- ``from_quantized(layer)``: from a trained :class:`QuantLinear` (what the exporter does);
- ``like(layer)`` / :func:`build_packed_like` / :func:`pack_model` with ``skeleton=True``: right shapes and dtypes,
  zero contents, so a freshly built model can receive a packed state dict with ``load_state_dict`` (what
  fairseq-generate does with an exported checkpoint).

Matmuls go through :mod:`cress_bitnet.kernels` (a compiled CPU kernel, or unpack + ``F.linear``). Everything
numeric after the matmul runs in fp32 and is cast to the input dtype at the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cress_bitnet.kernels import signed_matmul, svcd_forward, ternary_matmul

from .base import QuantLinear
from .bcq import BCQLinear
from .bitnet import BitLinear, TernaryLinear, _NormActQuantLinear
from .common import EPS, fake_quant_per_token, row_group_ids, seed_act_rescale
from .minmax import MinMaxQuantLinear, fake_quant_minmax
from .packing import pack_signs, pack_ternary, unpack_signs
from .registry import QUANTIZERS
from .svcd import SVCDLinear
from .tsvd import TSVDLinear

AUX_DTYPE = torch.float16
"""Storage dtype of scales, biases, norms and h: the issue's deployable format."""


def replace_modules(
    model: nn.Module,
    predicate: Callable[[str, nn.Module], bool],
    build: Callable[[str, nn.Module], nn.Module],
) -> list[str]:
    """Replace every submodule for which ``predicate(name, module)`` holds by ``build(name, module)``.

    Matches are collected before anything changes, and descendants of a replaced module are not visited, so
    ``build`` always sees the original module. The root itself is never replaced. Returns the sorted names.
    """
    names: list[str] = []
    for name, module in model.named_modules():
        if name and predicate(name, module) and not any(name.startswith(done + ".") for done in names):
            names.append(name)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, build(name, getattr(parent, child)))
    return sorted(names)


def buffer_nbytes(module: nn.Module) -> int:
    """Bytes of the module's state dict tensors (what a packed checkpoint stores for it)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _group_absmax(q: Tensor, num_groups: int) -> Tensor:
    """max|q| over each group of output rows of a dequantized weight: the group's scale when |q| ∈ {0, scale}."""
    ids = row_group_ids(q.shape[0], num_groups, q.device)
    return q.new_zeros(num_groups).scatter_reduce(0, ids, q.abs().amax(dim=1), "amax")


class PackedLinear(nn.Module, ABC):
    """Base of the packed layers: shapes, options and a zero-filled bias; subclasses add their buffers.

    ``OPTIONS`` lists the training layer's non-tensor settings the inference forward needs (copied by
    :meth:`like`); all other training options (init, fit method, ...) only shape the weights, which are
    already baked into the buffers.
    """

    SOURCE: ClassVar[type[QuantLinear]]
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, aux_dtype: torch.dtype = AUX_DTYPE
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.aux_dtype = aux_dtype
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=aux_dtype))
        else:
            self.bias: Tensor | None = None

    @classmethod
    def from_options(
        cls, in_features: int, out_features: int, bias: bool = True, aux_dtype: torch.dtype = AUX_DTYPE, **options: Any
    ) -> Self:
        """Zero-filled packed layer from the training layer's constructor options, without building that layer.

        Options that only shape the weights (init, fit method, ...) are accepted and ignored; the packed
        constructors use the same defaults as the training ones.
        """
        cls.SOURCE.check_options(options)
        kept = {k: options[k] for k in cls.OPTIONS if k in options}
        return cls(in_features, out_features, bias, aux_dtype=aux_dtype, **kept)

    @classmethod
    def like(cls, layer: QuantLinear, aux_dtype: torch.dtype = AUX_DTYPE) -> Self:
        """Zero-filled packed layer with ``layer``'s shapes and inference options (no quantization work)."""
        if not isinstance(layer, cls.SOURCE):
            raise TypeError(f"{cls.__name__} packs {cls.SOURCE.__name__}, got {type(layer).__name__}")
        options = cls._layer_options(layer)
        return cls(layer.in_features, layer.out_features, layer.bias is not None, aux_dtype=aux_dtype, **options)

    @classmethod
    def _layer_options(cls, layer: QuantLinear) -> dict[str, Any]:
        return {k: getattr(layer, k) for k in cls.OPTIONS}

    @classmethod
    @torch.no_grad()
    def from_quantized(cls, layer: QuantLinear, aux_dtype: torch.dtype = AUX_DTYPE) -> Self:
        """Packed copy of a trained layer; its forward matches ``layer.eval()`` up to ``aux_dtype`` rounding."""
        packed = cls.like(layer, aux_dtype)
        packed._fill(layer)
        if layer.bias is not None:
            packed.bias.copy_(layer.bias.detach())
        return packed.to(layer.weight.device)

    @abstractmethod
    def _fill(self, layer: Any) -> None:
        ...

    def _aux(self, name: str, *shape: int) -> None:
        self.register_buffer(name, torch.zeros(shape, dtype=self.aux_dtype))

    def _add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias.float()

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={getattr(self, k)!r}" for k in self.OPTIONS)
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{opts}"


class PackedSVCDLinear(PackedLinear):
    """SVCD at inference: y = Act(signs · LN'(x) + b) ⊙ h with g folded into the LayerNorm affine (LN' = LN ⊙ g).

    With one activation group the seed's per-tensor weight scale cancels (quant.md §1.2), so sign bits, folded LN,
    b and h are all that is stored. Buffers: ``signs`` (out, ⌈in/8⌉) uint8; ``ln_weight``, ``ln_bias`` (in),
    ``h``, ``bias`` (out) in fp16 — exactly ``SVCDLinear.deployable_bits()``.
    """

    SOURCE = SVCDLinear
    OPTIONS = ("num_groups", "act_quant", "eps")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        aux_dtype: torch.dtype = AUX_DTYPE,
        num_groups: int = 1,
        act_quant: str = "per_token",
        eps: float = 1e-5,
    ) -> None:
        super().__init__(in_features, out_features, bias, aux_dtype)
        self.num_groups, self.act_quant, self.eps = num_groups, act_quant, eps
        self.register_buffer("signs", torch.zeros(out_features, -(-in_features // 8), dtype=torch.uint8))
        self._aux("ln_weight", in_features)
        self._aux("ln_bias", in_features)
        self._aux("h", out_features)

    @classmethod
    def _layer_options(cls, layer: QuantLinear) -> dict[str, Any]:
        return {"num_groups": layer.num_groups, "act_quant": layer.act_quant, "eps": layer.norm.eps}

    def _fill(self, layer: SVCDLinear) -> None:
        self.signs.copy_(pack_signs(layer.binary_weight()))
        g = layer.g.float()
        self.ln_weight.copy_(layer.norm.weight.float() * g)
        self.ln_bias.copy_(layer.norm.bias.float() * g)
        self.h.copy_(layer.h)

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant != "seed":
            fused = svcd_forward(x, self.ln_weight, self.ln_bias, self.eps, self.signs, self.bias, self.h,
                                 self.act_quant == "per_token", EPS)
            if fused is not None:
                return fused
        u = F.layer_norm(x.float(), (self.in_features,), self.ln_weight.float(), self.ln_bias.float(), self.eps)
        z = self._add_bias(signed_matmul(u, self.signs, self.in_features))
        if self.act_quant == "per_token":
            z = fake_quant_per_token(z)
        elif self.act_quant == "seed":
            z = seed_act_rescale(z, self.num_groups)
        return (z * self.h.float()).to(x.dtype)


class _PackedNormActQuant(PackedLinear):
    """BitNet forward: norm (no affine) -> per-token fake quant -> packed matmul -> per-group scale -> + b."""

    OPTIONS = ("num_groups", "act_quant", "act_bits")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        aux_dtype: torch.dtype = AUX_DTYPE,
        num_groups: int = 1,
        act_quant: str = "per_token",
        act_bits: int = 8,
    ) -> None:
        super().__init__(in_features, out_features, bias, aux_dtype)
        self.num_groups, self.act_quant, self.act_bits = num_groups, act_quant, act_bits
        self._aux("scales", num_groups)

    def _fill(self, layer: _NormActQuantLinear) -> None:
        q = layer.quantized_weight().detach().float()  # levels × per-group scale, |q| ∈ {0, scale}
        self._store_levels(q)
        self.scales.copy_(_group_absmax(q, self.num_groups))

    @abstractmethod
    def _store_levels(self, q: Tensor) -> None:
        ...

    @abstractmethod
    def _normalize(self, x: Tensor) -> Tensor:
        ...

    @abstractmethod
    def _matmul(self, x: Tensor) -> Tensor:
        ...

    def forward(self, x: Tensor) -> Tensor:
        xn = self._normalize(x.float())
        if self.act_quant == "per_token":
            xn = fake_quant_per_token(xn, self.act_bits)
        scales = self.scales.float()
        if self.num_groups > 1:
            scales = scales[row_group_ids(self.out_features, self.num_groups, scales.device)]
        return self._add_bias(self._matmul(xn) * scales).to(x.dtype)


class PackedBitLinear(_PackedNormActQuant):
    """BitNet b1: ``signs`` (out, ⌈in/8⌉) uint8 plus one fp16 β per row group; matches ``deployable_bits()``."""

    SOURCE = BitLinear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self.register_buffer("signs", torch.zeros(out_features, -(-in_features // 8), dtype=torch.uint8))

    def _store_levels(self, q: Tensor) -> None:
        self.signs.copy_(pack_signs(q))

    def _normalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.in_features,), eps=EPS)

    def _matmul(self, x: Tensor) -> Tensor:
        return signed_matmul(x, self.signs, self.in_features)


class PackedTernaryLinear(_PackedNormActQuant):
    """BitNet b1.58: ``codes`` (out, ⌈in/4⌉) 2-bit ternary plus one fp16 γ per row group; = ``deployable_bits()``."""

    SOURCE = TernaryLinear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self.register_buffer("codes", torch.zeros(out_features, -(-in_features // 4), dtype=torch.uint8))

    def _store_levels(self, q: Tensor) -> None:
        self.codes.copy_(pack_ternary(torch.sign(q)))

    def _normalize(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.in_features,), eps=EPS)

    def _matmul(self, x: Tensor) -> Tensor:
        return ternary_matmul(x, self.codes, self.in_features)


class PackedBCQLinear(PackedLinear):
    """BCQ: y = Σ_i α_i ⊙ (S_i x) + b with one packed sign plane per bit.

    Buffers: ``planes`` (bits, out, ⌈in/8⌉) uint8, ``alphas`` (out, n_groups, bits) fp16 — matches
    ``deployable_bits()``. All planes go through one kernel call (stacked as bits·out rows); with column groups
    each group is one call on byte-aligned slices, or (group_size not a multiple of 8) W is rebuilt per forward.
    """

    SOURCE = BCQLinear
    OPTIONS = ("bits", "group_size")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        aux_dtype: torch.dtype = AUX_DTYPE,
        bits: int = 2,
        group_size: int | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, aux_dtype)
        self.bits, self.group_size = bits, group_size
        self.n_groups = 1 if group_size is None else in_features // group_size
        self.register_buffer("planes", torch.zeros(bits, out_features, -(-in_features // 8), dtype=torch.uint8))
        self._aux("alphas", out_features, self.n_groups, bits)

    def _fill(self, layer: BCQLinear) -> None:
        alpha, signs = layer.bcq_fit()  # (out, G, bits), (out, G, bits, gs)
        planes = signs.permute(2, 0, 1, 3).reshape(self.bits, self.out_features, self.in_features)
        self.planes.copy_(pack_signs(planes))
        self.alphas.copy_(alpha)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        alphas = self.alphas.float()  # (out, G, bits)
        rows = self.planes.reshape(self.bits * self.out_features, -1)
        if self.n_groups == 1:
            z = signed_matmul(xf, rows, self.in_features).unflatten(-1, (self.bits, self.out_features))
            y = (z * alphas[:, 0, :].T).sum(dim=-2)
        elif self.group_size % 8 == 0:
            gs, gb = self.group_size, self.group_size // 8
            y = 0
            for g in range(self.n_groups):
                z = signed_matmul(xf[..., g * gs : (g + 1) * gs], rows[:, g * gb : (g + 1) * gb], gs)
                y = y + (z.unflatten(-1, (self.bits, self.out_features)) * alphas[:, g, :].T).sum(dim=-2)
        else:
            signs = unpack_signs(self.planes, self.in_features).unflatten(-1, (self.n_groups, self.group_size))
            w = (signs * alphas.permute(2, 0, 1).unsqueeze(-1)).sum(dim=0).reshape(self.out_features, -1)
            y = F.linear(xf, w)
        return self._add_bias(y).to(x.dtype)


class PackedTSVDLinear(PackedLinear):
    """Ternary SVD: y = U (s ⊙ (V x)) + b, two add-only ternary matmuls with an fp16 s in between.

    Buffers: ``u_codes`` (out, ⌈r/4⌉), ``v_codes`` (r, ⌈in/4⌉) 2-bit ternary, ``s`` (r) fp16 — matches
    ``deployable_bits()``. The rank r is data-dependent, so a skeleton has r = 0 and :meth:`_load_from_state_dict`
    adopts the rank of the state dict it receives.
    """

    SOURCE = TSVDLinear

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, aux_dtype: torch.dtype = AUX_DTYPE, rank: int = 0
    ) -> None:
        super().__init__(in_features, out_features, bias, aux_dtype)
        self._alloc(rank)

    def _alloc(self, rank: int) -> None:
        self.register_buffer("u_codes", torch.zeros(self.out_features, -(-rank // 4), dtype=torch.uint8))
        self.register_buffer("v_codes", torch.zeros(rank, -(-self.in_features // 4), dtype=torch.uint8))
        self._aux("s", rank)

    @property
    def rank(self) -> int:
        return self.s.numel()

    def _fill(self, layer: TSVDLinear) -> None:
        u, s, v = layer.decompose()
        self._alloc(s.numel())
        self.u_codes.copy_(pack_ternary(u))
        self.v_codes.copy_(pack_ternary(v))
        self.s.copy_(s)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        s = state_dict.get(prefix + "s")
        if isinstance(s, Tensor) and s.dim() == 1 and s.numel() != self.rank:
            device = self.s.device
            self._alloc(s.numel())
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


class PackedMinMaxLinear(PackedLinear):
    """NeurST min/max: signed integer weight codes (int8 up to 8 bits, else int16) times c_w/(2^(b−1)−1).

    Buffers: ``codes`` (out, in), ``weight_clip``, ``act_clip`` (scalars, fp16). Bytes equal ``deployable_bits()``
    for 8 (and 16) bits; narrower widths still take a byte per code (not sub-byte packed). The weight is
    dequantized per forward, since there is no integer kernel for it here.
    """

    SOURCE = MinMaxQuantLinear
    OPTIONS = ("bits",)

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, aux_dtype: torch.dtype = AUX_DTYPE, bits: int = 8
    ) -> None:
        super().__init__(in_features, out_features, bias, aux_dtype)
        self.bits = bits
        code_dtype = torch.int8 if bits <= 8 else torch.int16
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=code_dtype))
        self._aux("weight_clip")
        self._aux("act_clip")

    def _step(self, clip: Tensor) -> Tensor:
        # fake_quant_minmax's levels are j·c/(2^(b−1)−1); its clamp keeps the step positive for c <= 0.
        return (clip.float().clamp_min(0) / (2 ** (self.bits - 1) - 1)).clamp_min(1e-12)

    def _fill(self, layer: MinMaxQuantLinear) -> None:
        q = layer.quantized_weight().detach().float()
        self.codes.copy_((q / self._step(layer.weight_clip.detach())).round_())
        self.weight_clip.copy_(layer.weight_clip.detach())
        self.act_clip.copy_(layer.act_clip.detach())

    def forward(self, x: Tensor) -> Tensor:
        xq = fake_quant_minmax(x.float(), self.act_clip.float(), self.bits)
        w = self.codes.float() * self._step(self.weight_clip)
        return self._add_bias(F.linear(xq, w)).to(x.dtype)


PACKED: dict[type[QuantLinear], type[PackedLinear]] = {
    cls.SOURCE: cls
    for cls in (
        PackedSVCDLinear,
        PackedBitLinear,
        PackedTernaryLinear,
        PackedBCQLinear,
        PackedTSVDLinear,
        PackedMinMaxLinear,
    )
}
"""Training layer class -> packed class."""

PACKED_METHODS: dict[str, type[PackedLinear]] = {name: PACKED[cls] for name, cls in QUANTIZERS.items()}
"""``quant_method`` name (as in QUANTIZERS) -> packed class."""


def packed_class(layer: QuantLinear) -> type[PackedLinear]:
    """The packed class for a training layer (subclasses of a known quantizer map like their base)."""
    for klass in type(layer).__mro__:
        if klass in PACKED:
            return PACKED[klass]
    raise TypeError(f"no packed form for {type(layer).__name__}")


def build_packed_like(layer: QuantLinear, aux_dtype: torch.dtype = AUX_DTYPE) -> PackedLinear:
    """Zero-filled packed counterpart of ``layer`` (shapes, dtypes, options), ready for ``load_state_dict``."""
    return packed_class(layer).like(layer, aux_dtype)


def pack_quantized(layer: QuantLinear, aux_dtype: torch.dtype = AUX_DTYPE) -> PackedLinear:
    """Packed counterpart of a trained ``layer``."""
    return packed_class(layer).from_quantized(layer, aux_dtype)


def pack_model(model: nn.Module, skeleton: bool = False, aux_dtype: torch.dtype = AUX_DTYPE) -> list[str]:
    """Replace every QuantLinear in ``model`` by its packed counterpart; returns the replaced names (sorted).

    ``skeleton=False`` packs the trained weights; ``skeleton=True`` only builds zero-filled modules of the right
    shapes (fast, no fitting), for a model whose packed state dict is loaded next (e.g. fairseq-generate on an
    exported checkpoint).
    """
    build = build_packed_like if skeleton else pack_quantized
    return replace_modules(
        model, lambda _name, module: isinstance(module, QuantLinear), lambda _name, module: build(module, aux_dtype)
    )


__all__ = [
    "AUX_DTYPE",
    "PACKED",
    "PACKED_METHODS",
    "PackedBCQLinear",
    "PackedBitLinear",
    "PackedLinear",
    "PackedMinMaxLinear",
    "PackedSVCDLinear",
    "PackedTSVDLinear",
    "PackedTernaryLinear",
    "buffer_nbytes",
    "build_packed_like",
    "pack_model",
    "pack_quantized",
    "packed_class",
    "replace_modules",
]
