"""Average the model weights of the last N checkpoints of a fairseq run (CRESS's ``avg_last_10_epoch.pt``).

fairseq keeps ``scripts/average_checkpoints.py`` in its source repository, but the ve-fairseq wheel does not ship it.
This version loads every file with ``torch.load(weights_only=True)`` (after ``import cress_bitnet``, which registers
the allowlist for fairseq's argparse/omegaconf/numpy objects), averages the floating-point tensors of ``model``
(integer buffers are taken from the newest checkpoint), keeps the rest of the newest checkpoint's state (cfg,
extra_state, optimizer history), and writes the result atomically (temporary file + rename).

Which files: ``checkpoint{EPOCH}.pt`` (``--kind epoch``), ``checkpoint_{EPOCH}_{UPDATE}.pt`` (``--kind update``), or
``auto``: epoch checkpoints if there are any, else update checkpoints, else ``checkpoint_last.pt`` alone. When fewer
than N files exist, all of them are averaged and a warning says so.

fairseq's spelling works too (CRESS's ``avg_epoch.sh``): ``--num-epoch-checkpoints N`` is ``--num N --kind epoch`` and
``--num-update-checkpoints N`` is ``--num N --kind update``.

Example: ``python -m scripts.average_checkpoints --inputs checkpoints/en-de.st --num 10 --output avg_last_10.pt``
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

import cress_bitnet  # noqa: F401  (registers the weights_only allowlist)
from cress_bitnet.fileio import atomic_output

EPOCH = re.compile(r"^checkpoint(\d+)\.pt$")
UPDATE = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")


def find_checkpoints(folder: Path, num: int, kind: str = "auto") -> list[Path]:
    """The newest ``num`` checkpoints of ``kind`` in ``folder``, newest first."""
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    epoch = sorted(((int(m.group(1)),), p) for p in folder.iterdir() if (m := EPOCH.match(p.name)))
    update = sorted(((int(m.group(2)), int(m.group(1))), p) for p in folder.iterdir() if (m := UPDATE.match(p.name)))
    if kind == "epoch" or (kind == "auto" and epoch):
        found = epoch
    elif kind == "update" or (kind == "auto" and update):
        found = update
    else:
        last = folder / "checkpoint_last.pt"
        found = [((0,), last)] if last.is_file() else []
    if not found:
        raise FileNotFoundError(f"no {kind} checkpoints in {folder}")
    return [p for _, p in reversed(found)][:num]


def average(paths: list[Path]) -> dict:
    """The newest state (``paths[0]``) with its ``model`` tensors replaced by the mean over ``paths``."""
    newest = torch.load(paths[0], map_location="cpu", weights_only=True)
    if "model" not in newest:
        raise ValueError(f"{paths[0]}: no 'model' state dict; not a fairseq checkpoint")
    keys = list(newest["model"])
    sums = {k: v.double() for k, v in newest["model"].items() if v.is_floating_point()}
    for path in paths[1:]:
        model = torch.load(path, map_location="cpu", weights_only=True)["model"]
        if list(model) != keys:
            diff = sorted(set(model) ^ set(keys))[:5]
            raise ValueError(f"{path}: parameter names differ from {paths[0]} (e.g. {diff})")
        for k in sums:
            if model[k].shape != sums[k].shape:
                raise ValueError(f"{path}: {k} has shape {tuple(model[k].shape)}, expected {tuple(sums[k].shape)}")
            sums[k] += model[k].double()
    for k, total in sums.items():
        newest["model"][k] = (total / len(paths)).to(newest["model"][k].dtype)
    return newest


def save_atomic(state: dict, output: Path) -> None:
    with atomic_output(output) as tmp:
        torch.save(state, tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", required=True, type=Path, help="checkpoint folder (a fairseq --save-dir)")
    count = ap.add_mutually_exclusive_group()
    count.add_argument("--num", type=int, default=10, help="average the newest N checkpoints of --kind")
    count.add_argument("--num-epoch-checkpoints", type=int, metavar="N",
                       help="fairseq's spelling of --num N --kind epoch")
    count.add_argument("--num-update-checkpoints", type=int, metavar="N",
                       help="fairseq's spelling of --num N --kind update")
    ap.add_argument("--kind", choices=["auto", "epoch", "update"], default="auto")
    ap.add_argument("--output", required=True, type=Path)
    args = ap.parse_args(argv)
    num_flag = "--num"
    for flag, kind in (("--num-epoch-checkpoints", "epoch"), ("--num-update-checkpoints", "update")):
        n = getattr(args, flag[2:].replace("-", "_"))
        if n is not None:
            if args.kind not in ("auto", kind):
                ap.error(f"{flag} averages {kind} checkpoints; it contradicts --kind {args.kind}")
            args.num, args.kind, num_flag = n, kind, flag
    if args.num < 1:
        ap.error(f"{num_flag} must be >= 1")
    try:
        paths = find_checkpoints(args.inputs, args.num, args.kind)
        if len(paths) < args.num:
            print(f"[average_checkpoints] warning: only {len(paths)} checkpoint(s) in {args.inputs}, "
                  f"averaging those instead of {args.num}", file=sys.stderr)
        state = average(paths)
        save_atomic(state, args.output)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: [average_checkpoints] {err}", file=sys.stderr)
        return 2
    names = ", ".join(p.name for p in paths)
    print(f"[average_checkpoints] averaged {len(paths)} checkpoint(s) ({names}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
