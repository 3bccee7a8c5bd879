#!/usr/bin/env python
"""Write the checkpoint a quant_transformer run starts from: the swapped model before its first update ("0 updates").

fairseq-train cannot save an untrained model (``--max-update 0`` means "no limit"), so this rebuilds the start point
from a checkpoint of the run itself (``--like``, e.g. ``checkpoint_1_25.pt``): its stored flags are replayed with the
quantization record cleared, which runs the same swap (same FP checkpoint, targets, init and — for ``calibrated`` —
the same label-free calibration) under the same seed as fairseq-train does before building the model. The output has
the run's cfg and the untrained weights, so ``scripts/generate.sh`` decodes it like any checkpoint of the run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import cress_bitnet  # noqa: F401  (registers the models and the weights_only allowlist)
from cress_bitnet.checkpoints import load_checkpoint
from cress_bitnet.fileio import atomic_output  # noqa: E402


def check_fp_weights(model: torch.nn.Module, fp_path: str) -> None:
    """Every tensor outside the swapped layers must be the FP checkpoint's, bit for bit (else this is not the start)."""
    from cress_bitnet.quantization import QuantLinear

    swapped = [n + "." for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    fp = load_checkpoint(fp_path, what="FP checkpoint", flag="--pretrained-st-checkpoint")["model"]
    state = model.state_dict()
    shared = [k for k in fp if k in state and not any(k.startswith(p) for p in swapped)]
    bad = [k for k in shared if not torch.equal(fp[k], state[k])]
    if not shared or bad:
        sys.exit(f"error: the rebuilt model does not hold the FP weights of {fp_path} ({len(bad)} of {len(shared)} "
                 f"tensors differ, e.g. {bad[:3]})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--like", required=True, type=Path, help="a checkpoint saved by the quant_transformer run")
    ap.add_argument("--output", required=True, type=Path, help="where to write the 0-update checkpoint")
    args = ap.parse_args(argv)
    from fairseq import checkpoint_utils, tasks, utils

    raw = load_checkpoint(args.like, what="checkpoint", flag="--like")
    cfg = checkpoint_utils.load_checkpoint_to_cpu(str(args.like))["cfg"]
    model_args = copy.deepcopy(raw["cfg"]["model"])
    if getattr(model_args, "arch", None) not in ("quant_transformer", "quant_transformer_postln"):
        sys.exit(f"error: --like {args.like} is not a quant_transformer checkpoint (arch {model_args.arch!r})")
    model_args.quant_record = None  # replay the swap instead of rebuilding the trained structure
    np.random.seed(cfg.common.seed)  # as fairseq_cli.train before it builds the model
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    save_dir, restore = model_args.save_dir, getattr(model_args, "restore_file", None)
    with tempfile.TemporaryDirectory() as empty:  # else the run's checkpoint_last.pt reads as a run to resume
        model_args.save_dir, model_args.restore_file = empty, "checkpoint_last.pt"
        model = task.build_model(model_args)
    model_args.save_dir, model_args.restore_file = save_dir, restore
    check_fp_weights(model, model_args.pretrained_st_checkpoint)
    raw["cfg"]["model"] = model_args  # now holds the record of this exact swap
    raw["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    raw.pop("last_optimizer_state", None)
    raw["optimizer_history"] = raw.get("optimizer_history", [])[-1:]
    with atomic_output(args.output) as tmp:
        torch.save(raw, tmp)
    print(f"wrote the untrained swapped model of {args.like.parent} -> {args.output}")


if __name__ == "__main__":
    main()
