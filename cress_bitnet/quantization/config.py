"""Quantization configs: one frozen dataclass per method, validated when built (cf. torchao's ``AOBaseConfig``).

A config holds every non-tensor setting of a method. Its fields declare their own choices and ranges
(:func:`option`), so validation, the fairseq flags (``choices=``, help text) and the budget planner's bit range all
read one declaration. Configs serialise with :meth:`QuantConfig.to_dict` / :func:`config_from_dict`, which is how a
checkpoint's quantization record stores them (torchao's ``config_to_dict`` / ``config_from_dict`` play that role there).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self


def option(
    default: Any,
    *,
    choices: tuple[Any, ...] | None = None,
    low: int | float | None = None,
    high: int | float | None = None,
    flag: str | None = None,
    help: str = "",  # noqa: A002 - the argparse word
) -> Any:
    """A config field with its allowed values (``choices`` or a closed ``[low, high]`` range; ``None`` is always
    allowed when it is the default) and the generic fairseq flag that sets it (``flag``, e.g. ``"quant_bits"``)."""
    meta = {"choices": choices, "low": low, "high": high, "flag": flag, "help": help}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class QuantConfig:
    """Base of the per-method configs. Subclasses set ``method`` (the registry name) and declare fields with
    :func:`option`; shape-dependent checks go in :meth:`check_shape`, which every layer calls when it is built."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None and f.default is None:
                continue
            if meta.get("choices") is not None and value not in meta["choices"]:
                raise ValueError(f"{self.method}: {f.name} must be one of {list(meta['choices'])}, got {value!r}")
            low, high = meta.get("low"), meta.get("high")
            if (low is not None or high is not None) and not isinstance(value, (int, float)):
                raise ValueError(f"{self.method}: {f.name} must be a number, got {value!r}")
            if (low is not None and value < low) or (high is not None and value > high):
                raise ValueError(f"{self.method}: {f.name} must be in [{low}, {high}], got {value}")

    def check_shape(self, in_features: int, out_features: int) -> None:
        """Raise ValueError when this config cannot apply to an (out, in) weight; default: any shape."""

    @classmethod
    @functools.cache
    def field_names(cls) -> tuple[str, ...]:
        # Cached: quantized layers answer attribute lookups from it, and fairseq's beam search asks every module
        # `hasattr(m, "reorder_incremental_state")` on every step (~100k misses a demo decode).
        return tuple(f.name for f in fields(cls))

    @classmethod
    def field_range(cls, name: str) -> tuple[Any, Any]:
        """The declared ``(low, high)`` of a numeric field (e.g. the bit widths the budget planner may use)."""
        meta = {f.name: f.metadata for f in fields(cls)}[name]
        return meta.get("low"), meta.get("high")

    @classmethod
    def build(cls, **options: Any) -> Self:
        """Like the constructor, but an unknown option is a TypeError that names the method and its options."""
        unknown = sorted(set(options) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"{cls.method} ({cls.__name__}) got unknown option(s) {unknown}; "
                            f"accepted options: {list(cls.field_names())}")
        return cls(**options)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated again."""
        type(self).build(**changes)  # names checked with the right message
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"method": ..., field: value, ...}``; :func:`config_from_dict` inverts it."""
        return {"method": self.method, **{f.name: getattr(self, f.name) for f in fields(self)}}


def resolve_config(config_cls: type[QuantConfig], config: QuantConfig | None, options: dict[str, Any]) -> QuantConfig:
    """The config a layer is built with: ``config`` itself, or ``config_cls`` built from keyword ``options``."""
    if config is None:
        return config_cls.build(**options)
    if options:
        raise TypeError(f"pass either a config or keyword options, not both (got {sorted(options)})")
    if type(config) is not config_cls:
        raise TypeError(f"expected a {config_cls.__name__}, got {type(config).__name__}")
    return config
