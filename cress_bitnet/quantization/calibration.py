"""Label-free calibrated swap: each quantized layer is fitted to its trained layer's outputs on real activations.

:func:`quantize_calibrated_` is :func:`~.surgery.quantize_` for configs whose layer wants data
(:meth:`~.base.QuantLinear.needs_calibration`, e.g. SVCD ``init="calibrated"``). Calibration data is whatever
``run_calibration()`` feeds through the model (in the fairseq glue: greedy decoding of a few training utterances with
the model itself, as the budget planner does), so no labels are used. Layers are swapped in forward order (the order
of their first call): before each swap the calibration is run again, so a layer's inputs come from the model with
every earlier layer already quantized and its fit absorbs their error (as GPTQ/OBQ-style sequential post-training
quantization does, Frantar et al., 2022, arXiv 2210.17323). Layers whose captured inputs are identical (q, k, v of one
attention; the cross-attention k, v of every decoder layer, all fed by the encoder output) are fitted from one run.
Each layer's target is the trained nn.Linear applied to those same inputs; the fit itself is the method's
:meth:`~.base.QuantLinear.init_from_data`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .config import QuantConfig
from .registry import method_of
from .surgery import Configs, Filter, quantize_, replace_modules, resolve_configs

logger = logging.getLogger(__name__)

MAX_CALIBRATION_TOKENS = 4096
"""Rows of input kept per layer (strided subsample): the fits are O(rows · in²), a few thousand rows are plenty."""


def _capture_inputs(model: nn.Module, names: list[str], run: Callable[[], None]) -> tuple[dict[str, Tensor], list[str]]:
    """Inputs (rows, in) of each named module during ``run()``, and the names in the order of their first call."""
    modules = dict(model.named_modules())
    chunks: dict[str, list[Tensor]] = {n: [] for n in names}
    order: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0]
            if not isinstance(x, Tensor):
                return
            if name not in order:
                order.append(name)
            chunks[name].append(x.detach().reshape(-1, x.shape[-1]).float().cpu())

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if not chunks[n]]
    if missing:
        raise RuntimeError(f"calibration never reached these layers: {missing}")
    inputs = {}
    for n, parts in chunks.items():
        x = torch.cat(parts)
        inputs[n] = x[:: x.shape[0] // MAX_CALIBRATION_TOKENS + 1]
    return inputs, order


def quantize_calibrated_(
    model: nn.Module,
    configs: Configs,
    filter_fn: Filter = None,
    run_calibration: Callable[[], None] | None = None,
    after_swap: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """``quantize_`` with data: layers whose config needs calibration are fitted on inputs captured while
    ``run_calibration()`` runs, in forward order; the others are swapped first, directly. ``after_swap(names)`` is
    called after every swap (e.g. to route fairseq attention through the swapped projections before the next run).
    Returns the sorted names of every swapped module. Without ``run_calibration`` a layer that needs data is an error.
    """
    chosen = resolve_configs(model, configs, filter_fn)
    data = [n for n, c in chosen.items() if method_of(c).layer.needs_calibration(c)]
    swapped = quantize_(model, {n: c for n, c in chosen.items() if n not in data})
    if swapped and after_swap is not None:
        after_swap(swapped)
    if not data:
        return swapped
    if run_calibration is None:
        raise ValueError(f"{data[0]}: init 'calibrated' needs calibration data (run_calibration), none was given")
    remaining = list(data)
    while remaining:
        start = time.perf_counter()
        inputs, order = _capture_inputs(model, remaining, run_calibration)
        first = inputs[order[0]]
        group = [n for n in order if inputs[n].shape == first.shape and torch.equal(inputs[n], first)]
        errors = _swap_fitted(model, {n: chosen[n] for n in group}, first)
        if after_swap is not None:
            after_swap(sorted(group))
        swapped += group
        remaining = [n for n in remaining if n not in group]
        logger.info(f"calibrated {', '.join(group)} on {first.shape[0]} tokens in {time.perf_counter() - start:.1f}s: "
                    f"relative output error {', '.join(f'{e:.3f}' for e in errors.values())}")
    return sorted(swapped)


def _swap_fitted(model: nn.Module, configs: dict[str, QuantConfig], inputs: Tensor) -> dict[str, float]:
    """Swap each named nn.Linear for its method's layer fitted on ``inputs``; relative output error of each."""
    errors: dict[str, float] = {}

    def build(name: str, linear: nn.Module) -> nn.Module:
        x = inputs.to(linear.weight.device, linear.weight.dtype)
        layer = method_of(configs[name]).layer.from_linear(linear, configs[name], calibration_inputs=x)
        with torch.no_grad():
            ref = linear(x).float()
            errors[name] = float((layer(x).float() - ref).norm() / ref.norm().clamp_min(1e-12))
        return layer

    replace_modules(model, lambda n, _m: n in configs, build)
    return errors
