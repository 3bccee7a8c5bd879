"""Deployable size of a model's linear layers: quantized layers at their packed size, the rest at fp16."""

from __future__ import annotations

from torch import nn

from .base import QuantLinear
from .surgery import OUTPUT_HEADS

FP16_BITS = 16


def module_deploy_bits(module: nn.Module, fp_bits: int = FP16_BITS) -> int:
    """Bits a linear layer needs once deployed (quantized: its packed form; plain nn.Linear: ``fp_bits`` per value)."""
    if isinstance(module, QuantLinear):
        return module.deployable_bits()
    if isinstance(module, nn.Linear):
        return fp_bits * (module.weight.numel() + (module.bias.numel() if module.bias is not None else 0))
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def linear_deploy_bytes(model: nn.Module, prefix: str = "decoder.", fp_bits: int = FP16_BITS) -> dict[str, int]:
    """Per-module deployable bytes of every linear under ``prefix``, output heads excluded (they are never swapped)."""
    sizes = {}
    for name, module in model.named_modules():
        if not name.startswith(prefix) or name.rsplit(".", 1)[-1] in OUTPUT_HEADS:
            continue
        if isinstance(module, (QuantLinear, nn.Linear)):
            sizes[name] = -(-module_deploy_bits(module, fp_bits) // 8)
    return sizes
