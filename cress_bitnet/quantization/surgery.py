"""Model surgery, kept apart from the layer math (cf. torchao's ``quantize_(model, config, filter_fn)``).

* :func:`quantize_` swaps selected ``nn.Linear`` modules for the training form of a method, with one config for all
  or one config per module (mixed precision, or a stored record);
* :func:`pack_` converts every training-form layer to its packed inference form (or builds zero-filled packed
  layers for a packed state dict that is loaded next);
* both go through one :func:`replace_modules` and one matcher, :func:`select_modules`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .base import AUX_DTYPE, QuantLinear
from .config import QuantConfig
from .registry import method_of

# Output heads are usually tied to the embedding and dominate quality; quantize only when named exactly.
OUTPUT_HEADS = frozenset({"output_projection", "lm_head"})
_WILDCARDS = set("*?[")

Filter = Callable[[str, nn.Module], bool] | str | Sequence[str] | None
Configs = QuantConfig | Mapping[str, QuantConfig]


def split_patterns(targets: str | Sequence[str]) -> list[str]:
    """Comma-separated string or list -> stripped, non-empty patterns."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    return [p.strip() for p in items if p.strip()]


def pattern_matches(pattern: str, name: str) -> bool:
    """fnmatch over module names, except that an output head only matches a pattern naming it without wildcards."""
    if not fnmatch.fnmatchcase(name, pattern):
        return False
    last = name.rsplit(".", 1)[-1]
    if last not in OUTPUT_HEADS:
        return True
    final = pattern.rsplit(".", 1)[-1]
    return not (_WILDCARDS & set(final)) and final == last


def select_modules(names: Sequence[str], patterns: str | Sequence[str], *, what: str = "target pattern") -> list[str]:
    """Names (in order) matched by any pattern; a pattern that matches nothing is an error naming it."""
    plist = split_patterns(patterns)
    if not plist:
        raise ValueError(f"need at least one {what}")
    selected: set[str] = set()
    for pattern in plist:
        hits = [n for n in names if pattern_matches(pattern, n)]
        if not hits:
            raise ValueError(f"{what} {pattern!r} matched no nn.Linear (output heads {sorted(OUTPUT_HEADS)} need an "
                             f"exact final name); nn.Linear modules: {list(names)[:8]}")
        selected.update(hits)
    return [n for n in names if n in selected]


def plain_linears(model: nn.Module) -> list[str]:
    """Names of the plain ``nn.Linear`` modules (not subclasses), in module order."""
    return [name for name, mod in model.named_modules() if type(mod) is nn.Linear]


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


def resolve_configs(model: nn.Module, configs: Configs, filter_fn: Filter = None) -> dict[str, QuantConfig]:
    """Module name -> config for every plain nn.Linear that ``quantize_`` would swap; validates before any change.

    ``configs`` is one config (applied to every module that passes ``filter_fn``; default: all but output heads) or
    a mapping from exact module names or fnmatch patterns to configs (exact names win, then the first matching
    pattern; every key must match something), further restricted by ``filter_fn`` when given.
    ``filter_fn``: a callable ``(name, module) -> bool``, or patterns as for :func:`select_modules`.
    """
    linears = plain_linears(model)
    modules = dict(model.named_modules())
    if filter_fn is None:
        allowed = [n for n in linears if n.rsplit(".", 1)[-1] not in OUTPUT_HEADS]
    elif callable(filter_fn):
        allowed = [n for n in linears if filter_fn(n, modules[n])]
    else:
        allowed = select_modules(linears, filter_fn)
    if isinstance(configs, QuantConfig):
        chosen = {n: configs for n in allowed}
    else:
        exact = {k: v for k, v in configs.items() if k in modules}
        patterns = {k: v for k, v in configs.items() if k not in modules}
        for key in patterns:
            select_modules(linears, [key], what="per-module config key")
        for key in exact:
            if key not in linears:
                raise ValueError(f"per-module config key {key!r} is a {type(modules[key]).__name__}, not nn.Linear")
        chosen = {}
        for n in linears:
            if n in exact:
                chosen[n] = exact[n]
            else:
                match = next((c for p, c in patterns.items() if pattern_matches(p, n)), None)
                if match is not None:
                    chosen[n] = match
        if filter_fn is not None:
            chosen = {n: c for n, c in chosen.items() if n in set(allowed)}
    for name, config in chosen.items():
        lin = modules[name]
        try:
            config.check_shape(lin.in_features, lin.out_features)
        except ValueError as err:
            raise ValueError(f"{name} ({lin.out_features}x{lin.in_features}): {err}") from err
    return chosen


def quantize_(model: nn.Module, configs: Configs, filter_fn: Filter = None) -> list[str]:
    """Swap the selected nn.Linear modules for quantized training layers (weights copied bit for bit).

    See :func:`resolve_configs` for how modules are chosen. Everything is validated before the model changes.
    Returns the sorted names of the swapped modules.
    """
    chosen = resolve_configs(model, configs, filter_fn)
    return replace_modules(model, lambda n, _m: n in chosen,
                           lambda n, m: method_of(chosen[n]).layer.from_linear(m, chosen[n]))


def quantize_packed_(model: nn.Module, configs: Configs, filter_fn: Filter = None, *,
                     aux_dtype: torch.dtype = AUX_DTYPE) -> list[str]:
    """Swap the selected nn.Linear modules straight for zero-filled packed inference layers, the shapes a packed
    state dict loads into (fairseq-generate on an exported checkpoint); returns the sorted names.

    The same result as ``quantize_`` then ``pack_(skeleton=True)`` without building the training form first: its
    weight-derived init (for ``signvalue`` an SVD of |W| per layer) would be overwritten by the load, and costs
    seconds at real size.
    """
    chosen = resolve_configs(model, configs, filter_fn)
    return replace_modules(model, lambda n, _m: n in chosen,
                           lambda n, m: method_of(chosen[n]).packed(m.in_features, m.out_features, m.bias is not None,
                                                                    chosen[n], aux_dtype=aux_dtype))


def pack_(model: nn.Module, *, skeleton: bool = False, aux_dtype: torch.dtype = AUX_DTYPE) -> list[str]:
    """Replace every training-form quantized layer by its packed inference form; returns the sorted names.

    ``skeleton=False`` packs the trained weights (torchao's "convert"); ``skeleton=True`` only builds zero-filled
    packed layers of the right shapes, for a packed state dict that is loaded next (e.g. fairseq-generate).
    """
    def build(_name: str, layer: nn.Module) -> nn.Module:
        packed = method_of(layer.config).packed
        return packed.like(layer, aux_dtype) if skeleton else packed.from_quantized(layer, aux_dtype)

    return replace_modules(model, lambda _n, m: isinstance(m, QuantLinear), build)


def quantize_model(model: nn.Module, method: str, targets: str | Sequence[str], **options: object) -> list[str]:
    """Convenience: ``quantize_(model, <method's config>(**options), targets)``."""
    from .registry import get_method

    return quantize_(model, get_method(method).config.build(**options), split_patterns(targets) or targets)
