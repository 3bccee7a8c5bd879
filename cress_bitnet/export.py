"""Export a trained quant_transformer checkpoint to its packed deployable form.

Usage: ``python -m cress_bitnet.export IN.pt OUT.pt [--fp16-rest] [--json SIZES.json]``

Every quantized layer (named in ``args.quant_modules``) is rebuilt from its state-dict entries alone — no fairseq
model is built — with ``args.quant_method`` and ``args.quant_options`` (plus per-module ``args.quant_plan``
overrides), then converted by :func:`~cress_bitnet.quantization.packed.pack_quantized`. Its latent weight and
training-only tensors are replaced by the packed module's buffers (sign planes packed 8 per byte, ternary codes
4 per byte, scales / h / biases / folded LayerNorm in fp16). All other tensors stay as they are (fp32 unless
``--fp16-rest``). The output keeps the trainer format (so fairseq-generate can read it) without the optimizer
state, with ``quant_packed = True`` in the model args; the model must then be built with packed modules
(``pack_model(model, skeleton=True)``) before the state dict is loaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cress_bitnet.checkpoints import load_checkpoint
from cress_bitnet.fileio import atomic_output
from cress_bitnet.quantization.base import QuantLinear
from cress_bitnet.quantization.packed import AUX_DTYPE, pack_quantized
from cress_bitnet.quantization.registry import QUANTIZERS


class ExportError(ValueError):
    """The checkpoint lacks what the exporter needs (quant_* args, a named module's tensors, ...)."""


def _json_arg(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    value = getattr(args, name, None)
    if value is None or value == "":
        if default is None:
            raise ExportError(f"checkpoint args have no {name!r}; was it trained with --arch quant_transformer?")
        return default
    return json.loads(value) if isinstance(value, str) else value


def model_args(state: dict[str, Any]) -> argparse.Namespace:
    """The model's argparse.Namespace: ``cfg["model"]`` (trainer format) or legacy ``args``."""
    cfg = state.get("cfg")
    args = cfg.get("model") if cfg is not None else None
    if args is None:
        args = state.get("args")
    if not isinstance(args, argparse.Namespace):
        raise ExportError("checkpoint has neither cfg['model'] nor args as an argparse.Namespace")
    return args


def layer_specs(args: argparse.Namespace) -> tuple[str, dict[str, dict[str, Any]]]:
    """(method, {module name: constructor options}) from quant_method / quant_modules / quant_options / quant_plan.

    A plan value that is an int sets the ``bits`` option of that module (mixed precision); a dict is merged
    into its options.
    """
    method = getattr(args, "quant_method", None)
    if method not in QUANTIZERS:
        raise ExportError(f"quant_method {method!r} is not one of {sorted(QUANTIZERS)}")
    modules = _json_arg(args, "quant_modules")
    options = _json_arg(args, "quant_options", {})
    plan = _json_arg(args, "quant_plan", {})
    unknown = sorted(set(plan) - set(modules))
    if unknown:
        raise ExportError(f"quant_plan names modules that are not in quant_modules: {unknown}")
    specs = {}
    for name in modules:
        override = plan.get(name, {})
        specs[name] = {**options, **({"bits": override} if isinstance(override, int) else override)}
        QUANTIZERS[method].check_options(specs[name])
    return method, specs


def rebuild_layer(method: str, tensors: dict[str, Tensor], options: dict[str, Any]) -> QuantLinear:
    """The training layer of ``method`` holding exactly ``tensors`` (its state dict, keys relative to the module)."""
    if "weight" not in tensors:
        raise ExportError(f"no weight among {sorted(tensors)}")
    out_features, in_features = tensors["weight"].shape
    layer = QUANTIZERS[method](in_features, out_features, bias="bias" in tensors, **options)
    layer.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return layer.eval()


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def storage_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages reachable in ``obj``: what torch.save writes as tensor data."""
    seen: dict[int, int] = {}
    for t in _tensors(obj):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def export_state(
    state: dict[str, Any], fp16_rest: bool = False, aux_dtype: torch.dtype = AUX_DTYPE
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Packed copy of a trainer-format checkpoint dict, and the size report (bytes) of its quantized layers."""
    args = model_args(state)
    method, specs = layer_specs(args)
    params: dict[str, Tensor] = state["model"]
    new_params: dict[str, Tensor] = {}
    modules = []
    claimed: set[str] = set()
    for name, options in specs.items():
        prefix = name + "."
        tensors = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        if not tensors:
            raise ExportError(f"quant_modules names {name!r} but the state dict has no {prefix}* tensors")
        claimed.update(prefix + k for k in tensors)
        layer = rebuild_layer(method, tensors, options)
        packed = pack_quantized(layer, aux_dtype)
        packed_bytes = 0
        for key, value in packed.state_dict().items():
            new_params[prefix + key] = value.detach().clone()
            packed_bytes += _nbytes(value)
        linear_values = layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        modules.append({
            "name": name,
            "shape": f"{layer.out_features}x{layer.in_features}",
            "fp32_bytes": 4 * linear_values,
            "fp16_bytes": 2 * linear_values,
            "packed_bytes": packed_bytes,
        })
    converted: dict[int, Tensor] = {}  # storage -> fp16 copy, so tied tensors stay tied
    for key, value in params.items():
        if key in claimed:
            continue
        if fp16_rest and value.is_floating_point() and value.dtype != torch.float16:
            ptr = value.untyped_storage().data_ptr()
            if ptr not in converted or converted[ptr].shape != value.shape:
                converted[ptr] = value.half()
            value = converted[ptr]
        new_params[key] = value
    out = {k: v for k, v in state.items() if k not in ("model", "last_optimizer_state")}
    out["model"] = new_params
    if state.get("optimizer_history"):
        out["optimizer_history"] = state["optimizer_history"][-1:]  # fairseq's upgrade code reads the last entry
    for key in ("cfg", "args"):  # copies: the caller's checkpoint dict is left untouched
        if out.get(key) is not None:
            out[key] = copy.deepcopy(out[key])
            target = out[key] if key == "args" else out[key].get("model")
            if isinstance(target, argparse.Namespace):
                target.quant_packed = True
    quant = {k: sum(m[k] for m in modules) for k in ("fp32_bytes", "fp16_bytes", "packed_bytes")}
    rest = {k: v for k, v in new_params.items() if not any(k.startswith(s + ".") for s in specs)}
    report = {
        "method": method,
        "modules": modules,
        "quantized": {
            **quant,
            "compression_vs_fp16": quant["fp16_bytes"] / max(quant["packed_bytes"], 1),
            "compression_vs_fp32": quant["fp32_bytes"] / max(quant["packed_bytes"], 1),
        },
        "rest_tensor_bytes": storage_bytes(rest),
        "tensor_bytes": storage_bytes(out),
    }
    return out, report


def format_report(report: dict[str, Any]) -> str:
    """Per-module and total size table (bytes); FP32/FP16 are the same layer as a plain nn.Linear (W + b)."""
    rows = [f"{'module':<48} {'shape':>10} {'FP32':>11} {'FP16':>11} {'packed':>10} {'x vs FP16':>9}"]
    for m in report["modules"]:
        ratio = m["fp16_bytes"] / max(m["packed_bytes"], 1)
        rows.append(f"{m['name']:<48} {m['shape']:>10} {m['fp32_bytes']:>11,} {m['fp16_bytes']:>11,} "
                    f"{m['packed_bytes']:>10,} {ratio:>8.2f}x")
    q = report["quantized"]
    rows.append(f"{'quantized layers (' + report['method'] + ')':<48} {'':>10} {q['fp32_bytes']:>11,} "
                f"{q['fp16_bytes']:>11,} {q['packed_bytes']:>10,} {q['compression_vs_fp16']:>8.2f}x")
    rows.append(f"compression of the quantized layers: {q['compression_vs_fp16']:.2f}x vs FP16, "
                f"{q['compression_vs_fp32']:.2f}x vs FP32")
    rows.append(f"other tensors: {report['rest_tensor_bytes']:,} bytes; all tensor data: {report['tensor_bytes']:,} "
                "bytes")
    if "file_bytes" in report:
        rows.append(f"output file: {report['file_bytes']:,} bytes "
                    f"({report['file_bytes'] - report['tensor_bytes']:,} bytes of pickle/zip overhead and non-tensors)")
    return "\n".join(rows)


def export_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, fp16_rest: bool = False, aux_dtype: torch.dtype = AUX_DTYPE
) -> dict[str, Any]:
    """Read ``src``, write the packed checkpoint to ``dst``; returns the size report incl. ``file_bytes``."""
    state = load_checkpoint(src, what="quantized checkpoint")
    out, report = export_state(state, fp16_rest=fp16_rest, aux_dtype=aux_dtype)
    dst = Path(dst)
    with atomic_output(dst) as tmp:
        torch.save(out, tmp)
    report["file_bytes"] = dst.stat().st_size
    report["input_file_bytes"] = Path(src).stat().st_size
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``python -m cress_bitnet.export`` / ``cress-bitnet-export``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="trainer-format quant_transformer checkpoint")
    parser.add_argument("output", help="where to write the packed checkpoint")
    parser.add_argument("--fp16-rest", action="store_true", help="also store the non-quantized tensors in fp16")
    parser.add_argument("--json", metavar="PATH", help="write the size report as JSON")
    opts = parser.parse_args(argv)
    try:
        report = export_checkpoint(opts.input, opts.output, fp16_rest=opts.fp16_rest)
    except (ExportError, TypeError, RuntimeError) as err:
        print(f"cress-bitnet-export: error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
