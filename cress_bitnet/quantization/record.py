"""The quantization record a checkpoint carries: which module has which config, and whether it is packed.

Stored as one JSON string in the model args (``quant_record``) so that a saved model rebuilds — swapped, planned,
packed — from the checkpoint alone:
``{"version": 1, "packed": false, "modules": {"decoder.layers.0.fc1": {"method": "svcd", "init": ...}, ...}}``.
cress_bitnet 0.1 stored four JSON strings instead (``quant_method``, ``quant_modules``, ``quant_options``,
``quant_plan``, plus ``quant_packed``); :meth:`QuantRecord.from_args` reads both.
"""

from __future__ import annotations

import json
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cress_bitnet.kernels import warm_kernel

from .base import PackedLinear, QuantLinear
from .config import QuantConfig
from .registry import config_from_dict, get_method
from .surgery import quantize_, quantize_packed_

RECORD_VERSION = 1
LEGACY_FIELDS = ("quant_modules", "quant_options", "quant_plan", "quant_packed")
# cress_bitnet 0.1 option names that were renamed in the configs
_LEGACY_RENAMES = {"bcq": {"method": "fit"}, "minmax": {"weight_clip": "weight_clip_init", "act_clip": "act_clip_init"}}


class RecordError(ValueError):
    """A quantization record that cannot be read or does not fit the model."""


@dataclass
class QuantRecord:
    modules: dict[str, QuantConfig] = field(default_factory=dict)
    packed: bool = False

    # ---- serialisation ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "packed": self.packed,
                "modules": {n: c.to_dict() for n, c in sorted(self.modules.items())}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "quant_record") -> QuantRecord:
        if not isinstance(data, dict) or not isinstance(data.get("modules"), dict):
            raise RecordError(f"{where}: expected {{'version', 'packed', 'modules': {{...}}}}, got {str(data)[:200]}")
        if data.get("version", RECORD_VERSION) > RECORD_VERSION:
            raise RecordError(f"{where}: record version {data['version']} is newer than this cress_bitnet understands "
                              f"({RECORD_VERSION}); upgrade cress_bitnet")
        modules = {}
        for name, cfg in data["modules"].items():
            try:
                modules[name] = config_from_dict(cfg)
            except (TypeError, ValueError) as err:
                raise RecordError(f"{where}: module {name}: {err}") from err
        return cls(modules, bool(data.get("packed", False)))

    @classmethod
    def from_json(cls, text: str, where: str = "quant_record") -> QuantRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"{where}: not valid JSON ({err})") from err
        return cls.from_dict(data, where)

    # ---- model args ----------------------------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Namespace) -> QuantRecord | None:
        """The record stored in model args (``quant_record``, or the 0.1 fields); None for an unquantized model."""
        text = getattr(args, "quant_record", None)
        if text:
            return cls.from_json(text) if isinstance(text, str) else cls.from_dict(text)
        if getattr(args, "quant_modules", None):
            return cls.from_legacy_args(args)
        return None

    @classmethod
    def from_legacy_args(cls, args: Namespace) -> QuantRecord:
        """cress_bitnet 0.1: one method and option set for all ``quant_modules``, per-module bits in ``quant_plan``."""
        def load(name: str, default: Any) -> Any:
            value = getattr(args, name, None)
            if value in (None, ""):
                return default
            return json.loads(value) if isinstance(value, str) else value

        method = getattr(args, "quant_method", None) or "svcd"
        renames = _LEGACY_RENAMES.get(method, {})
        options = {renames.get(k, k): v for k, v in load("quant_options", {}).items()}
        plan = load("quant_plan", {})
        unknown = sorted(set(plan) - set(load("quant_modules", [])))
        if unknown:
            raise RecordError(f"quant_plan names modules that are not in quant_modules: {unknown}")
        config_cls = get_method(method).config
        modules = {}
        for name in load("quant_modules", []):
            override = plan.get(name, {})
            opts = {**options, **({"bits": override} if isinstance(override, int) else override)}
            modules[name] = config_cls.build(**opts)
        return cls(modules, bool(getattr(args, "quant_packed", False)))

    def store(self, args: Namespace) -> None:
        """Write this record into ``args`` (and drop the 0.1 fields, so there is one source of truth)."""
        args.quant_record = self.to_json()
        for name in LEGACY_FIELDS:
            if hasattr(args, name):
                delattr(args, name)

    # ---- models --------------------------------------------------------------------------------------------------
    @classmethod
    def of_model(cls, model: nn.Module) -> QuantRecord:
        """The record describing ``model``'s quantized layers (all training-form or all packed)."""
        layers = {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear, PackedLinear))}
        packed = {isinstance(m, PackedLinear) for m in layers.values()}
        if len(packed) > 1:
            raise RecordError("model mixes packed and training-form quantized layers")
        return cls({n: m.config for n, m in layers.items()}, packed == {True})

    def apply(self, model: nn.Module) -> list[str]:
        """Rebuild the quantized structure on a freshly built FP model; its (quantized) state dict loads next."""
        if not self.modules:
            names = []
        elif self.packed:
            names = quantize_packed_(model, self.modules)
            warm_kernel()
        else:
            names = quantize_(model, self.modules)
        missing = sorted(set(self.modules) - set(names))
        if missing:
            raise RecordError(f"record names modules the model does not have as nn.Linear: {missing[:8]}")
        return names

    def with_options(self, **changes: Any) -> QuantRecord:
        """A copy where every module config that has an option in ``changes`` takes the new value."""
        modules = {n: c.replace(**{k: v for k, v in changes.items() if k in c.field_names()})
                   for n, c in self.modules.items()}
        return QuantRecord(modules, self.packed)

    def methods(self) -> list[str]:
        return sorted({c.method for c in self.modules.values()})

    def summary(self) -> str:
        by: dict[str, int] = {}
        for cfg in self.modules.values():
            key = json.dumps({k: v for k, v in cfg.to_dict().items()}, sort_keys=True)
            by[key] = by.get(key, 0) + 1
        parts = [f"{n} x {k}" for k, n in sorted(by.items())]
        return f"{len(self.modules)} modules{' (packed)' if self.packed else ''}: " + "; ".join(parts)
