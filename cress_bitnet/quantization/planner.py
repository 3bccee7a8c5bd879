"""Memory-budget mixed precision after myQASR (Fish et al., Interspeech 2023): label-free bit allocation.

Each layer's sensitivity is the median |output| over unlabeled calibration data. Starting from the widest bit width,
sweeps visit the layers in descending median order and take one bit from each, re-measuring the size after every
decrement, and stop as soon as the budget is met. So every layer ends at b or b-1 bits (the uniformity constraint),
and the layers with the largest medians (treated as the least sensitive, as in myQASR) give up their bit first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .config import QuantConfig
from .registry import METHODS, method_of

logger = logging.getLogger(__name__)

MAX_SAMPLES_PER_LAYER = 1 << 20
PLANNED_OPTION = "bits"


def bit_range(config: QuantConfig) -> tuple[int, int]:
    """The bit widths a method allows, as its config declares them; a method without ``bits`` cannot be planned."""
    if PLANNED_OPTION not in config.field_names():
        plannable = sorted(m for m, spec in METHODS.items() if PLANNED_OPTION in spec.config.field_names())
        raise ValueError(f"--quant-budget-mb needs a method with a bit width ({', '.join(plannable)}), "
                         f"not {config.method}")
    low, high = config.field_range(PLANNED_OPTION)
    return int(low), int(high)


def size_table(linears: dict[str, nn.Linear], config: QuantConfig) -> dict[str, dict[int, int]]:
    """Deployable bits of every layer at every allowed width (layers built on the meta device: no memory, no fit)."""
    low, high = bit_range(config)
    layer_cls = method_of(config).layer
    return {
        name: {b: layer_cls(lin.in_features, lin.out_features, lin.bias is not None, config.replace(bits=b),
                            device="meta").deployable_bits() for b in range(low, high + 1)}
        for name, lin in linears.items()
    }


def plan_configs(linears: dict[str, nn.Linear], config: QuantConfig, budget_bits: int,
                 medians: dict[str, float]) -> tuple[dict[str, QuantConfig], dict[str, dict[int, int]]]:
    """Per-module configs (``config`` with planned ``bits``) that fit ``budget_bits``, and the size table used."""
    low, high = bit_range(config)
    sizes = size_table(linears, config)
    bits = select_bits(sizes, medians, budget_bits, low, high)
    return {n: config.replace(bits=bits[n]) for n in linears}, sizes


@torch.no_grad()
def activation_medians(model: nn.Module, names: Iterable[str], run: Callable[[], None]) -> dict[str, float]:
    """Median |output| of each named module while ``run()`` feeds calibration data through ``model``."""
    modules = dict(model.named_modules())
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    missing = [n for n in samples if n not in modules]
    if missing:
        raise KeyError(f"no such modules: {missing}")

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            values = output.detach().abs().flatten().float()
            if values.numel() > MAX_SAMPLES_PER_LAYER:  # a strided subsample keeps the median honest and cheap
                values = values[:: values.numel() // MAX_SAMPLES_PER_LAYER + 1]
            samples[name].append(values.cpu())

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in samples]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    empty = [n for n, v in samples.items() if not v]
    if empty:
        raise RuntimeError(f"calibration never reached these layers: {empty}")
    return {n: float(torch.cat(v).median()) for n, v in samples.items()}


def select_bits(
    size_bits: dict[str, dict[int, int]],
    medians: dict[str, float],
    budget_bits: int,
    min_bits: int,
    max_bits: int,
) -> dict[str, int]:
    """myQASR's Algorithm 1: one-bit decrements in sweeps over layers sorted by descending median.

    ``size_bits[name][b]`` is the deployable size of layer ``name`` at ``b`` bits.
    """
    if min_bits > max_bits:
        raise ValueError(f"min_bits {min_bits} > max_bits {max_bits}")
    bits = {n: max_bits for n in size_bits}
    order = sorted(size_bits, key=lambda n: (-medians[n], n))

    def total() -> int:
        return sum(size_bits[n][bits[n]] for n in bits)

    if total() <= budget_bits:
        return bits
    floor = sum(size_bits[n][min_bits] for n in bits)
    if floor > budget_bits:
        raise ValueError(
            f"the budget ({budget_bits / 8 / 2**20:.4f} MB) is below the smallest possible size of the "
            f"{len(bits)} layers ({floor / 8 / 2**20:.4f} MB at {min_bits} bit(s)); raise --quant-budget-mb"
        )
    while True:
        for name in order:
            if bits[name] > min_bits:
                bits[name] -= 1
                if total() <= budget_bits:
                    return bits


def plan_for_budget(model: nn.Module, names: list[str], config: QuantConfig, budget_mb: float,
                    run_calibration: Callable[[], None]) -> dict[str, QuantConfig]:
    """The whole planner: calibrate (``run_calibration`` feeds unlabeled data through ``model``), measure, select.

    Returns one config per layer in ``names`` (``config`` with its planned ``bits``) and logs the plan.
    """
    modules = dict(model.named_modules())
    medians = activation_medians(model, names, run_calibration)
    configs, sizes = plan_configs({n: modules[n] for n in names}, config, int(budget_mb * 8 * 2**20), medians)
    total = sum(sizes[n][c.bits] for n, c in configs.items())
    logger.info(f"budget plan for {len(names)} layers (budget {budget_mb} MB, total {total / 8 / 2**20:.4f} MB): "
                + ", ".join(f"{n}: {c.bits} bits (median |out| {medians[n]:.4g})" for n, c in configs.items()))
    return configs
