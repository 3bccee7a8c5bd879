"""Rebuild a trained FP speech-translation model from its checkpoint alone (architecture from its args).

Used by ``quant_transformer`` (``--pretrained-st-checkpoint``) and by knowledge distillation (``--kd-teacher``). Any
FP speech-translation format of the checkpoint registry is accepted -- ours, CRESS's and onebit-st's baseline -- after
:func:`cress_bitnet.checkpoints.upgrade_to_native` has rewritten it in memory.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from cress_bitnet.checkpoints import (
    CheckpointError,
    detect_format,
    load_checkpoint,
    saved_model_args,
    upgrade_to_native,
)
from cress_bitnet.models.hubert_transformer import (
    ARCH_FIELDS,
    TRAINING_FIELDS,
    HubertTransformerModel,
    hubert_transformer_base,
)


def st_model_args(state: dict[str, Any], path: str, flag: str) -> Namespace:
    """The saved model args of a speech-translation checkpoint (any registered ST format), or a CheckpointError."""
    detect_format(state, path, role="st", flag=flag)
    args = saved_model_args(state)
    if args is None:
        raise CheckpointError(f"{path} ({flag}): speech-translation checkpoint without model args ('cfg' or 'args')")
    return args


def build_fp_model(path: str, task: Any, *, flag: str,
                   overrides: Namespace | None = None) -> tuple[HubertTransformerModel, Namespace]:
    """Rebuild a trained FP ST model from its checkpoint alone (architecture from its args, weights from its state).

    ``overrides`` are the caller's own args (the command line): training settings given there win; a HuBERT file
    given there (``--hubert-model-path``) serves checkpoints that store no HuBERT architecture (CRESS, onebit-st).
    """
    state = load_checkpoint(path, what="speech-translation checkpoint", flag=flag)
    fmt = detect_format(state, path, role="st", flag=flag)
    if fmt.implied_arch(state) in ("quant_transformer", "quant_transformer_postln"):
        raise CheckpointError(f"{path} ({flag}): is {fmt.description}; this flag needs a full-precision "
                              "speech-translation checkpoint (e.g. --arch hubert_transformer)")
    upgrade_to_native(state, path)
    saved = st_model_args(state, path, flag)
    args = Namespace(**vars(overrides)) if overrides is not None else Namespace()
    for name in ARCH_FIELDS:
        setattr(args, name, getattr(saved, name, None))
    for name in TRAINING_FIELDS:
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(saved, name, None))
    if not getattr(saved, "hubert_cfg", None):  # CRESS-style args: HuBERT comes from a file
        args.hubert_model_path = getattr(overrides, "hubert_model_path", None) or getattr(saved, "hubert_model_path",
                                                                                          None)
    args.load_pretrained_mt_encoder_decoder_from = None
    hubert_transformer_base(args)
    model = HubertTransformerModel.build_model(args, task)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} ({flag}): does not match the architecture stored in it: {err}") from err
    return model, args
