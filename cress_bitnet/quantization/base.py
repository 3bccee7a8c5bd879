"""Common base class of the quantized linears.

Every quantizer keeps nn.Linear's ``weight`` (out, in) and ``bias`` (out) as the latent full-precision
parameters, so optimizers, checkpoints and weight-tying code keep working after a module swap.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Self

import torch
from torch import Tensor, nn


class QuantLinear(nn.Module, ABC):
    """Base of all quantized linears: latent fp ``weight``/``bias`` plus a quantized forward.

    Subclasses set ``OPTIONS`` (the keyword options their constructor and :meth:`from_linear` accept),
    implement :meth:`quantized_weight`, :meth:`deployable_bits` and ``forward``, and may override
    :meth:`init_from_weight` for data-dependent initialisation (run again after weights are copied).
    """

    OPTIONS: tuple[str, ...] = ()

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self._reset_linear_parameters()

    def _reset_linear_parameters(self) -> None:
        # Same distribution as nn.Linear.reset_parameters, so a fresh layer is a drop-in replacement.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise TypeError naming unknown options; lets the glue fail before touching a model."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise TypeError(f"{cls.__name__} got unknown option(s) {unknown}; accepted options: {list(cls.OPTIONS)}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options: Any) -> Self:
        """Build from a trained nn.Linear: copy W and b bit for bit, then run data-dependent init."""
        cls.check_options(options)
        w = linear.weight
        module = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=w.device,
            dtype=w.dtype,
            **options,
        )
        with torch.no_grad():
            module.weight.copy_(w)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        module.init_from_weight()
        return module

    def init_from_weight(self) -> None:
        """Data-dependent initialisation from the current latent weight; default: nothing."""

    @abstractmethod
    def quantized_weight(self) -> Tensor:
        """The effective (dequantized) weight the forward uses, shape (out, in)."""
        ...

    @abstractmethod
    def deployable_bits(self) -> int:
        """Exact bits of the deployable form (packed weights + 16 bits per fp16 auxiliary value)."""
        ...

    def _bias_values(self) -> int:
        return self.out_features if self.bias is not None else 0

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.OPTIONS if hasattr(self, k))
        base = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return f"{base}, {opts}" if opts else base
