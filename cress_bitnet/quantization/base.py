"""Base classes of the two forms every method has: the training layer and the packed inference layer.

Both are built from ``(in_features, out_features, bias, config)`` — or keyword options that build the config — so
the constructor signature and its validation exist once, here. Config fields read as attributes (``layer.bits``).

* :class:`QuantLinear` keeps nn.Linear's ``weight`` (out, in) and ``bias`` (out) as latent full-precision parameters,
  so optimizers, checkpoints and weight-tying code keep working after a module swap (straight-through training).
* :class:`PackedLinear` holds only buffers (packed codes plus small fp16 vectors) and reproduces its training layer's
  eval-mode forward; :meth:`PackedLinear.from_quantized` converts a trained layer (the torchao QAT "convert" step).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from cress_bitnet.kernels import PrepackedLayout

from .config import QuantConfig, resolve_config

AUX_DTYPE = torch.float16
"""Storage dtype of packed scales, biases, norms and h: the deployable format."""


class _ConfiguredLinear(nn.Module, ABC):
    """Shapes + config, one constructor for both forms; config fields readable as attributes.

    Keyword arguments named in ``FACTORY_KEYS`` (``device``/``dtype`` for the training form, ``aux_dtype`` for the
    packed form) go to :meth:`_allocate`; all others build the config.
    """

    CONFIG: ClassVar[type[QuantConfig]]
    FACTORY_KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, in_features: int, out_features: int, bias: bool = True, config: QuantConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        factory = {k: kwargs.pop(k) for k in list(kwargs) if k in self.FACTORY_KEYS}
        config = resolve_config(self.CONFIG, config, kwargs)
        config.check_shape(in_features, out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        self._allocate(bias, **factory)

    @abstractmethod
    def _allocate(self, bias: bool, **factory: Any) -> None:
        """Create the tensors of this form."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            config = self.__dict__.get("config")
            if config is not None and name in config.field_names():
                return getattr(config, name)
            raise

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={getattr(self.config, k)!r}" for k in self.config.field_names())
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{opts}"


class QuantLinear(_ConfiguredLinear):
    """Training form: latent fp ``weight``/``bias`` plus a quantized forward with straight-through gradients.

    Subclasses implement :meth:`quantized_weight`, :meth:`deployable_bits` and ``forward``; they add parameters in
    :meth:`build` and may override :meth:`init_from_weight` for weight-dependent initialisation (run again after the
    trained weights are copied in by :meth:`from_linear`) and :meth:`init_from_data` for a fit to the trained layer's
    outputs on real activations (label-free calibration, see :mod:`.calibration`).
    """

    FACTORY_KEYS = ("device", "dtype")

    def _allocate(self, bias: bool, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **factory))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self._reset_linear_parameters()
        self.build(device, dtype)

    def build(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        """Create the method's own parameters/buffers (default: none)."""

    def _reset_linear_parameters(self) -> None:
        # Same distribution as nn.Linear.reset_parameters, so a fresh layer is a drop-in replacement.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig | None = None, *,
                    calibration_inputs: Tensor | None = None, **options: Any) -> Self:
        """Build from a trained nn.Linear: copy W and b bit for bit, then run the weight-dependent init, and — when
        ``calibration_inputs`` (tokens, ..., in) of this layer are given and the config wants it — fit the layer's
        outputs to ``linear``'s on them (:meth:`init_from_data`)."""
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, config=config,
                     device=w.device, dtype=w.dtype, **options)
        with torch.no_grad():
            module.weight.copy_(w)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        module.init_from_weight()
        if calibration_inputs is not None and cls.needs_calibration(module.config):
            with torch.no_grad():
                x = calibration_inputs.detach().reshape(-1, linear.in_features).to(w.device)
                module.init_from_data(x, linear(x.to(w.dtype)))
        return module

    def init_from_weight(self) -> None:
        """Weight-dependent initialisation from the current latent weight; default: nothing."""

    @classmethod
    def needs_calibration(cls, config: QuantConfig) -> bool:
        """Whether ``config`` asks for :meth:`init_from_data` (default: never)."""
        return False

    def init_from_data(self, inputs: Tensor, targets: Tensor) -> None:
        """Fit the free parameters so that ``self(inputs) ≈ targets`` (inputs (N, in), targets (N, out), the trained
        layer's outputs); default: nothing (the method has no data-dependent init)."""

    @abstractmethod
    def quantized_weight(self) -> Tensor:
        """The effective (dequantized) weight the forward uses, shape (out, in)."""

    @abstractmethod
    def deployable_bits(self) -> int:
        """Exact bits of the packed form (packed weights + 16 bits per fp16 auxiliary value)."""

    def _bias_values(self) -> int:
        return self.out_features if self.bias is not None else 0


class PackedLinear(_ConfiguredLinear):
    """Inference form: buffers only (no latent weight). Subclasses allocate them in :meth:`build` and fill them
    from a trained layer in :meth:`fill`; a freshly constructed layer is zero-filled, ready for ``load_state_dict``
    (what fairseq-generate does with an exported checkpoint)."""

    FACTORY_KEYS = ("aux_dtype",)

    def _allocate(self, bias: bool, aux_dtype: torch.dtype = AUX_DTYPE) -> None:
        self.aux_dtype = aux_dtype
        self.layout = PrepackedLayout()  # the kernel's copy of this layer's packed weight, made on first use
        if bias:
            self.register_buffer("bias", torch.zeros(self.out_features, dtype=aux_dtype))
        else:
            self.bias: Tensor | None = None
        self.build()

    @abstractmethod
    def build(self) -> None:
        """Register the zero-filled buffers of the packed form."""

    @abstractmethod
    def fill(self, layer: Any) -> None:
        """Fill the buffers from a trained training-form layer of the same method."""

    @classmethod
    def like(cls, layer: QuantLinear, aux_dtype: torch.dtype = AUX_DTYPE) -> Self:
        """Zero-filled packed layer with ``layer``'s shapes and config (no quantization work)."""
        if not isinstance(layer, QuantLinear) or layer.CONFIG is not cls.CONFIG:
            raise TypeError(f"{cls.__name__} packs {cls.CONFIG.method} layers, got {type(layer).__name__}")
        return cls(layer.in_features, layer.out_features, layer.bias is not None, layer.config, aux_dtype=aux_dtype)

    @classmethod
    @torch.no_grad()
    def from_quantized(cls, layer: QuantLinear, aux_dtype: torch.dtype = AUX_DTYPE) -> Self:
        """Packed counterpart of a trained ``layer`` (on the layer's device)."""
        packed = cls.like(layer, aux_dtype)
        packed.fill(layer)
        if layer.bias is not None:
            packed.bias.copy_(layer.bias.detach())
        return packed.to(layer.weight.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A packed file stores its auxiliary vectors in fp16 by default; one exported with another float dtype (e.g.
        # fp32 for exactness checks) keeps it instead of being rounded into this layer's fp16 buffers.
        for name, buf in list(self._buffers.items()):
            incoming = state_dict.get(prefix + name)
            if (buf is not None and isinstance(incoming, Tensor) and buf.is_floating_point()
                    and incoming.is_floating_point() and incoming.dtype != buf.dtype):
                self._buffers[name] = buf.to(incoming.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _aux(self, name: str, *shape: int) -> None:
        self.register_buffer(name, torch.zeros(shape, dtype=self.aux_dtype))

    def _add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias.float()


def buffer_nbytes(module: nn.Module) -> int:
    """Bytes of the module's state dict tensors (what a packed checkpoint stores for it)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def check_finite_quantizers(model: nn.Module) -> None:
    """Raise ValueError naming the first quantized layer tensor with NaN/inf (a corrupt or diverged checkpoint)."""
    for name, module in model.named_modules():
        if isinstance(module, (QuantLinear, PackedLinear)):
            for key, t in module.state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad = int((~torch.isfinite(t)).sum())
                    raise ValueError(f"{name}.{key} holds {bad} non-finite value(s) of {t.numel()}: the checkpoint is "
                                     "corrupt or the run diverged (NaN/inf in a quantizer's tensors)")
