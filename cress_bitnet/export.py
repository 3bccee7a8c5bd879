"""Export a trained quant_transformer checkpoint to its packed deployable form.

Usage: ``python -m cress_bitnet.export IN.pt OUT [--format pt|safetensors] [--fp16-rest] [--json SIZES.json]``

Every quantized layer named by the checkpoint's quantization record (:class:`~cress_bitnet.quantization.QuantRecord`;
files of cress_bitnet 0.1 are read too) is rebuilt from its state-dict entries alone — no fairseq model is built —
with its own config, then converted by its method's packed class (``PackedLinear.from_quantized``). Its latent weight
and training-only tensors are replaced by the packed buffers (sign planes 8 per byte, ternary codes 4 per byte, min/max
codes at their bit width, scales / h / biases / folded LayerNorm in fp16). All other tensors stay as they are (fp32
unless ``--fp16-rest``). The output keeps the trainer format (so fairseq-generate reads it) without the optimizer
state, and its record says ``packed``: the model is then built with zero-filled packed layers before the state dict
is loaded. ``--format safetensors`` writes the same tensors and model args as a safetensors file instead
(:mod:`cress_bitnet.checkpoints.safetensors_format`: no pickle at all when it is read).
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

from cress_bitnet.checkpoints import load_checkpoint, saved_model_args
from cress_bitnet.checkpoints.safetensors_format import SafetensorsFormatError, save_state
from cress_bitnet.fileio import atomic_output
from cress_bitnet.quantization import AUX_DTYPE, QuantConfig, QuantLinear, QuantRecord, RecordError, get_method

FORMATS = ("pt", "safetensors")


class ExportError(ValueError):
    """The checkpoint lacks what the exporter needs (a quantization record, a named module's tensors, ...)."""


def model_args(state: dict[str, Any]) -> argparse.Namespace:
    """The model's argparse.Namespace (``cfg["model"]`` or legacy ``args``)."""
    args = saved_model_args(state)
    if not isinstance(args, argparse.Namespace):
        raise ExportError("checkpoint has neither cfg['model'] nor args as an argparse.Namespace")
    return args


def checkpoint_record(args: argparse.Namespace) -> QuantRecord:
    try:
        record = QuantRecord.from_args(args)
    except (RecordError, TypeError, ValueError) as err:
        raise ExportError(str(err)) from err
    if record is None or not record.modules:
        raise ExportError("checkpoint has no quantization record; was it trained with --arch quant_transformer?")
    if record.packed:
        raise ExportError("checkpoint is already packed")
    return record


def rebuild_layer(config: QuantConfig, tensors: dict[str, Tensor]) -> QuantLinear:
    """The training layer of ``config``'s method holding exactly ``tensors`` (its state dict, keys relative)."""
    if "weight" not in tensors:
        raise ExportError(f"no weight among {sorted(tensors)}")
    out_features, in_features = tensors["weight"].shape
    layer = get_method(config.method).layer(in_features, out_features, bias="bias" in tensors, config=config)
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
    record = checkpoint_record(args)
    params: dict[str, Tensor] = state["model"]
    new_params: dict[str, Tensor] = {}
    modules = []
    claimed: set[str] = set()
    for name, config in record.modules.items():
        prefix = name + "."
        tensors = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        if not tensors:
            raise ExportError(f"the quantization record names {name!r} but the state dict has no {prefix}* tensors")
        claimed.update(prefix + k for k in tensors)
        layer = rebuild_layer(config, tensors)
        packed = get_method(config.method).packed.from_quantized(layer, aux_dtype)
        packed_bytes = 0
        for key, value in packed.state_dict().items():
            new_params[prefix + key] = value.detach().clone()
            packed_bytes += _nbytes(value)
        linear_values = layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        modules.append({
            "name": name,
            "method": config.method,
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
                QuantRecord(record.modules, packed=True).store(target)
    quant = {k: sum(m[k] for m in modules) for k in ("fp32_bytes", "fp16_bytes", "packed_bytes")}
    rest = {k: v for k, v in new_params.items() if not any(k.startswith(s + ".") for s in record.modules)}
    report = {
        "method": "+".join(record.methods()),
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
                    f"({report['file_bytes'] - report['tensor_bytes']:,} bytes of container overhead and non-tensors)")
    return "\n".join(rows)


def export_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, fp16_rest: bool = False, aux_dtype: torch.dtype = AUX_DTYPE,
    fmt: str = "pt",
) -> dict[str, Any]:
    """Read ``src``, write the packed checkpoint to ``dst`` as ``fmt`` (one of :data:`FORMATS`); returns the size
    report incl. ``file_bytes``."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {FORMATS}")
    state = load_checkpoint(src, what="quantized checkpoint")
    out, report = export_state(state, fp16_rest=fp16_rest, aux_dtype=aux_dtype)
    dst = Path(dst)
    if fmt == "safetensors":
        save_state(out, dst)
    else:
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
    parser.add_argument("--format", choices=FORMATS, default="pt",
                        help="pt: trainer-format torch checkpoint; safetensors: tensors + JSON header, read without "
                             "pickle (fairseq-generate --path and cress-bitnet-translate accept both)")
    parser.add_argument("--fp16-rest", action="store_true", help="also store the non-quantized tensors in fp16")
    parser.add_argument("--json", metavar="PATH", help="write the size report as JSON")
    opts = parser.parse_args(argv)
    try:
        report = export_checkpoint(opts.input, opts.output, fp16_rest=opts.fp16_rest, fmt=opts.format)
    except (ExportError, SafetensorsFormatError, TypeError, RuntimeError) as err:
        print(f"cress-bitnet-export: error: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
