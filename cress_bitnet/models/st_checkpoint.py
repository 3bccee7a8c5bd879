"""Rebuild a trained FP speech-translation model from its checkpoint alone (architecture from its args).

Used by ``quant_transformer`` (``--pretrained-st-checkpoint``) and by knowledge distillation (``--kd-teacher``).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from cress_bitnet.checkpoints import CheckpointError, load_checkpoint
from cress_bitnet.models.hubert_transformer import (
    ARCH_FIELDS,
    TRAINING_FIELDS,
    HubertTransformerModel,
    hubert_transformer_base,
)


def st_model_args(state: dict[str, Any], path: str, flag: str) -> Namespace:
    cfg = state.get("cfg") or {}
    args = cfg.get("model") if isinstance(cfg, dict) else None
    args = args if isinstance(args, Namespace) else state.get("args")
    if not isinstance(args, Namespace) or not getattr(args, "hubert_cfg", None):
        raise CheckpointError(
            f"{path} ({flag}): not a hubert_transformer speech-translation checkpoint (no model args with the HuBERT "
            "architecture); train one with --arch hubert_transformer first"
        )
    return args


def build_fp_model(path: str, task: Any, *, flag: str,
                   overrides: Namespace | None = None) -> tuple[HubertTransformerModel, Namespace]:
    """Rebuild a trained FP ST model from its checkpoint alone (architecture from its args, weights from its state)."""
    state = load_checkpoint(path, what="speech-translation checkpoint", flag=flag)
    saved = st_model_args(state, path, flag)
    args = Namespace(**vars(overrides)) if overrides is not None else Namespace()
    for name in ARCH_FIELDS:
        setattr(args, name, getattr(saved, name, None))
    for name in TRAINING_FIELDS:
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(saved, name, None))
    args.load_pretrained_mt_encoder_decoder_from = None
    hubert_transformer_base(args)
    model = HubertTransformerModel.build_model(args, task)
    result = model.load_state_dict(state["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} ({flag}): does not match the architecture stored in it: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    return model, args
