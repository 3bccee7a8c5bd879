"""Module surgery: swap selected nn.Linear children for quantized linears (cf. torchao's ``quantize_``).

Kept apart from the layers so the layers stay plain modules and the selection rules live in one place.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from torch import nn

from .registry import QUANTIZERS

# Output heads are usually tied to the embedding and dominate quality; quantize only when named exactly.
OUTPUT_HEADS = frozenset({"output_projection", "lm_head"})
_WILDCARDS = set("*?[")


def _patterns(targets: str | Sequence[str]) -> list[str]:
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    patterns = [p.strip() for p in items if p.strip()]
    if not patterns:
        raise ValueError("quantize_model needs at least one target pattern")
    return patterns


def _matches(pattern: str, name: str) -> bool:
    if not fnmatch.fnmatchcase(name, pattern):
        return False
    last = name.rsplit(".", 1)[-1]
    if last not in OUTPUT_HEADS:
        return True
    final = pattern.rsplit(".", 1)[-1]
    return not (_WILDCARDS & set(final)) and final == last


def quantize_model(
    model: nn.Module,
    method: str,
    targets: str | Sequence[str],
    **options: Any,
) -> list[str]:
    """Replace every plain nn.Linear whose name matches a target pattern with ``method``'s quantizer.

    ``targets``: comma-separated string or list of fnmatch patterns over ``named_modules()`` names.
    Output heads (last name part in OUTPUT_HEADS) are skipped unless a pattern's final component names
    them without wildcards. Weights and biases are copied via ``from_linear``. Returns sorted names.
    Validates everything (method, options, every pattern) before modifying the model.
    """
    if method not in QUANTIZERS:
        raise ValueError(f"unknown quantization method {method!r}; choose from {sorted(QUANTIZERS)}")
    cls = QUANTIZERS[method]
    cls.check_options(options)
    linears = [name for name, mod in model.named_modules() if type(mod) is nn.Linear]
    selected: set[str] = set()
    for pattern in _patterns(targets):
        hits = [name for name in linears if _matches(pattern, name)]
        if not hits:
            some = [name for name, _ in model.named_modules() if name][:8]
            raise ValueError(
                f"target pattern {pattern!r} matched no nn.Linear (output heads {sorted(OUTPUT_HEADS)} need an "
                f"exact final name); nn.Linear modules: {linears[:8]}; some modules: {some}"
            )
        selected.update(hits)
    for name in sorted(selected):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, cls.from_linear(getattr(parent, child), **options))
    return sorted(selected)
