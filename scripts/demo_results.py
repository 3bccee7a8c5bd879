"""Collect the demo's results: BLEU, quantized modules and deployable decoder size of each system.

For every ``--system NAME CKPT BLEU_FILE TRAIN_SECONDS`` the checkpoint is rebuilt with fairseq (no HuBERT or MT file
needed), its quantized modules are the ones that are ``cress_bitnet.quantization.QuantLinear`` instances, and
``decoder_linear_bytes`` is the sum of ``linear_deploy_bytes(model, prefix="decoder.")`` (quantized layers at their
packed size, every other decoder linear at fp16, the output projection excluded). Writes ``results.json`` and
``results.md`` and prints the table.

Example: ``python -m scripts.demo_results --data OUT/data/en-de --system fp ckpt.pt bleu.txt 120 --out-dir OUT``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def inspect_checkpoint(ckpt: Path, data: Path) -> tuple[list[str], int]:
    """(quantized module names, deployable bytes of the decoder's linear layers) of a saved model."""
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(Namespace(user_dir=str(REPO / "cress_bitnet")))
    from cress_bitnet.quantization import QuantLinear, linear_deploy_bytes

    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)], arg_overrides={"data": str(data)})
    model = models[0]
    quantized = [name for name, module in model.named_modules() if isinstance(module, QuantLinear)]
    return quantized, int(sum(linear_deploy_bytes(model, prefix="decoder.").values()))


def read_bleu(path: Path) -> float:
    text = path.read_text().strip()
    try:
        value = float(text.split()[0])
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: no BLEU number inside ({text[:80]!r})") from err
    if not math.isfinite(value):
        raise ValueError(f"{path}: BLEU is not finite ({value})")
    return value


def markdown(results: dict) -> str:
    systems = results["systems"]
    fp = next((s for s in systems if s["name"] == "fp"), None)
    lines = [
        "| system | BLEU | % of FP BLEU | quantized linears | decoder linear size | vs FP | train time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in systems:
        rel = f"{100 * s['bleu'] / fp['bleu']:.1f}%" if fp and fp["bleu"] > 0 else "n/a"
        ratio = f"{fp['decoder_linear_bytes'] / s['decoder_linear_bytes']:.2f}x" if fp else "n/a"
        lines.append(
            f"| {s['name']} | {s['bleu']:.2f} | {rel} | {len(s['quantized_modules'])} | "
            f"{s['decoder_linear_bytes'] / 1024:.1f} KiB | {ratio} | {s['train_seconds']:.0f} s |"
        )
    lines.append("")
    lines.append(f"Total time of all stages: {results['total_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    from cress_bitnet.fileio import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared ST data folder (rebuilds the task)")
    ap.add_argument("--system", nargs=4, action="append", required=True,
                    metavar=("NAME", "CKPT", "BLEU_FILE", "TRAIN_SECONDS"))
    ap.add_argument("--total-seconds", type=float, required=True)
    ap.add_argument("--out-dir", type=Path, required=True, help="gets results.json and results.md")
    args = ap.parse_args(argv)
    systems = []
    try:
        for name, ckpt, bleu_file, seconds in args.system:
            quantized, size = inspect_checkpoint(Path(ckpt), args.data)
            systems.append({
                "name": name,
                "bleu": read_bleu(Path(bleu_file)),
                "quantized_modules": quantized,
                "decoder_linear_bytes": size,
                "train_seconds": round(float(seconds), 1),
            })
    except (OSError, ValueError) as err:
        print(f"error: [demo_results] {err}", file=sys.stderr)
        return 2
    results = {"systems": systems, "total_seconds": round(args.total_seconds, 1)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    write_atomic(args.out_dir / "results.md", "# Demo results (synthetic en-de, tst-COMMON, sacreBLEU)\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
