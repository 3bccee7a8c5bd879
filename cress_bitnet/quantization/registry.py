"""The one registry of quantization methods: name -> (config class, training layer, packed inference layer).

A method registers itself at the bottom of its own file (``methods/<name>.py``) with :func:`register_method`;
everything else (``quantize_``, ``pack_``, the checkpoint record, the exporter, the fairseq flags) looks methods up
here, so adding a quantizer is one new file plus one import line in ``methods/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .config import QuantConfig

if TYPE_CHECKING:
    from .base import PackedLinear, QuantLinear


@dataclass(frozen=True)
class QuantMethod:
    name: str
    config: type[QuantConfig]
    layer: type[QuantLinear]
    packed: type[PackedLinear]


METHODS: dict[str, QuantMethod] = {}


def register_method(config: type[QuantConfig], layer: type[QuantLinear], packed: type[PackedLinear]) -> QuantMethod:
    """Register a method under ``config.method``; the layer classes are bound to the config class."""
    name = config.method
    if not name:
        raise ValueError(f"{config.__name__}.method is empty")
    if name in METHODS and METHODS[name].config is not config:
        raise ValueError(f"quantization method {name!r} is already registered by {METHODS[name].config.__name__}")
    layer.CONFIG = config
    packed.CONFIG = config
    METHODS[name] = QuantMethod(name, config, layer, packed)
    return METHODS[name]


def get_method(name: str) -> QuantMethod:
    if name not in METHODS:
        raise ValueError(f"unknown quantization method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def method_of(config: QuantConfig) -> QuantMethod:
    return get_method(config.method)


def config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """Inverse of :meth:`QuantConfig.to_dict` (missing fields take their defaults; unknown ones are an error)."""
    if not isinstance(data, dict) or "method" not in data:
        raise ValueError(f"a quantization config needs a 'method' key, got {data!r}")
    options = {k: v for k, v in data.items() if k != "method"}
    return get_method(data["method"]).config.build(**options)


def make_config(method: str, **options: Any) -> tuple[QuantConfig, list[str]]:
    """Config of ``method`` from generic options (e.g. fairseq flags): ``None`` values are skipped and options the
    method does not have are returned as the second item (the caller says they were ignored)."""
    cls = get_method(method).config
    names = set(cls.field_names())
    given = {k: v for k, v in options.items() if v is not None}
    ignored = sorted(k for k in given if k not in names)
    return cls.build(**{k: v for k, v in given.items() if k in names}), ignored


def generic_flags() -> dict[str, dict[str, Any]]:
    """The generic fairseq flags declared by the configs' fields: ``{flag: {"option", "type", "choices", "help"}}``.

    Choices are the union over methods (each method still validates its own); ranges are listed per method in the
    help text, so ``--help`` and validation cannot drift apart.
    """
    flags: dict[str, dict[str, Any]] = {}
    for method in METHODS.values():
        for f in fields(method.config):
            flag = f.metadata.get("flag")
            if not flag:
                continue
            spec = flags.setdefault(flag, {"option": f.name, "type": None, "choices": [], "notes": []})
            if spec["option"] != f.name:
                raise ValueError(f"flag {flag} maps to both {spec['option']} and {f.name}")
            default = f.default
            spec["type"] = spec["type"] or (type(default) if default is not None else int)
            for c in f.metadata.get("choices") or ():
                if c not in spec["choices"]:
                    spec["choices"].append(c)
            low, high = f.metadata.get("low"), f.metadata.get("high")
            rng = f" {low}-{high}" if low is not None and high is not None else f" >={low}" if low is not None else ""
            spec["notes"].append(f"{method.name}{rng}, default {default}")
            if f.metadata.get("help") and f.metadata["help"] not in spec.get("help", ""):
                spec["help"] = (spec.get("help", "") + " " + f.metadata["help"]).strip()
    for spec in flags.values():
        spec["choices"] = spec["choices"] or None
        spec["help"] = f"{spec.get('help', spec['option'])} ({'; '.join(spec.pop('notes'))})"
    return flags
