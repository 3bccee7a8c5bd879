"""Build fairseq's ``HubertModel`` from a HuBERT checkpoint without fairseq's loader and without label dictionaries.

Why not ``fairseq.checkpoint_utils``: it unpickles with whatever ``torch.load`` default is in force, composes a hydra
config from legacy ``args`` (slow, process-global state) and builds the pretraining task, whose label dictionaries must
come from ``task_state`` or from files on the authors' cluster. For speech translation we only need the encoder, so we
read the file with :func:`cress_bitnet.checkpoints.load_checkpoint` (``weights_only=True`` + allowlist), turn its
config into plain dicts, build ``HubertModel(model_cfg, task_cfg, [None])`` (no ``label_embs_concat``) and load the
weights strictly apart from the pretraining-only tensors. Both the released legacy layout (``args`` Namespace, e.g.
``hubert_base_ls960.pt``) and the current trainer layout (``cfg`` dict) are accepted.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from cress_bitnet.checkpoints import (
    PRETRAINING_ONLY_PREFIXES,
    CheckpointError,
    CheckpointFormat,
    detect_format,
    find_format,
    load_checkpoint,
    saved_arch,
    saved_model_args,
)

logger = logging.getLogger(__name__)

# Encoder regularisers a user may override when fine-tuning (None keeps the checkpoint's value). CRESS keeps them all,
# so the pretraining values (layerdrop 0.05, feature_grad_mult 0.1, ...) stay active unless overridden.
OVERRIDABLE = (
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "encoder_layerdrop",
    "feature_grad_mult",
    "dropout_input",
    "dropout_features",
)

def _hubert_classes() -> tuple[type, type, type]:
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    return HubertConfig, HubertPretrainingConfig, HubertModel


def _jsonable(value: Any) -> Any:
    """Plain JSON types only, so the config can live in an ST checkpoint (and its JSON logs) without new globals."""
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)


def _section(source: Any, dataclass_type: type) -> dict[str, Any]:
    """Pick the dataclass fields out of a flat Namespace or a config dict, fairseq-style.

    Mirrors ``fairseq.dataclass.utils._override_attr``: old checkpoints store list/tuple options as strings
    (``labels="['layer6.km500']"``), which are literal-evaluated when the field is not a string field; absent fields
    take the dataclass default.
    """
    from fairseq.dataclass.utils import interpret_dc_type

    if isinstance(source, argparse.Namespace):
        source = vars(source)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(source):
            source = OmegaConf.to_container(source, resolve=False, enum_to_str=True)
    except ImportError:  # pragma: no cover - omegaconf ships with fairseq
        pass
    out: dict[str, Any] = {}
    for name, fld in dataclass_type.__dataclass_fields__.items():
        if name.startswith("_"):
            continue
        if name in source:
            val = source[name]
        elif fld.default_factory is not dataclasses.MISSING:
            val = fld.default_factory()
        else:
            val = fld.default
        ftype = interpret_dc_type(fld.type)
        is_enum = isinstance(ftype, type) and issubclass(ftype, enum.Enum)
        if isinstance(val, str) and ftype is not str and not is_enum and not val.startswith("${"):
            try:
                val = ast.literal_eval(val)
            except (ValueError, SyntaxError):
                pass
        if val is not None and ftype in (int, float, bool) and not isinstance(val, (list, tuple, str)):
            val = ftype(val)
        out[name] = _jsonable(val)
    return out


def _task_section(state: Mapping[str, Any]) -> Any:
    """HuBERT's task config: the legacy ``args`` Namespace (model and task share it) or ``cfg["task"]``."""
    if isinstance(state.get("args"), argparse.Namespace):
        return state["args"]
    cfg = state.get("cfg")
    return cfg.get("task") if isinstance(cfg, Mapping) else getattr(cfg, "task", None)


def _check_kind(path: str, state: Mapping[str, Any], flag: str) -> tuple[CheckpointFormat, Any, Any]:
    """Accept only pretrained HuBERT checkpoints; anything else is refused saying what it is and where it belongs."""
    fmt = find_format(state)
    if fmt is not None:
        detect_format(state, path, role="hubert", flag=flag)  # raises for MT, DeltaLM and ST checkpoints
        task_src = _task_section(state)
        if task_src is None:
            raise CheckpointError(f"{path}: HuBERT checkpoint without a task config ('args' or 'cfg.task')")
        return fmt, saved_model_args(state), task_src
    name = saved_arch(state)
    keys = list(state["model"].keys()) if isinstance(state.get("model"), Mapping) else []
    if name is None and any(k.startswith("feature_extractor.conv_layers.") for k in keys):
        raise CheckpointError(
            f"{path}: has HuBERT-like weights but no 'args' or 'cfg' to rebuild the architecture from ({flag})"
        )
    if "model" not in state:
        raise CheckpointError(
            f"{path}: is not a fairseq checkpoint (no 'model' entry; top-level keys {sorted(state)[:8]}), "
            f"expected a HuBERT checkpoint for {flag}"
        )
    raise CheckpointError(
        f"{path}: is a '{name}' checkpoint, not a pretrained HuBERT checkpoint (arch hubert) as {flag} requires"
    )


def _check_finite(path: str, model_state: Mapping[str, Any]) -> None:
    """A diverged or corrupted checkpoint would silently produce NaN features; fail at load time instead."""
    for key, tensor in model_state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: contains non-finite values in tensor {key}")


def _build(hubert_cfg: Mapping[str, Any]) -> Any:
    from fairseq.dataclass.utils import merge_with_parent
    from omegaconf import OmegaConf

    hcfg, tcfg_cls, model_cls = _hubert_classes()
    model_dict = dict(hubert_cfg["model"])
    task_dict = dict(hubert_cfg["task"])
    if task_dict.get("data") is None:
        task_dict["data"] = ""  # MISSING in the dataclass; never read when building the model
    mcfg = merge_with_parent(hcfg(), OmegaConf.create(model_dict), remove_missing=True)
    tcfg = merge_with_parent(tcfg_cls(), OmegaConf.create(task_dict), remove_missing=True)
    # [None]: no label dictionaries, so no label_embs_concat (pretraining-only) and no dictionary files needed.
    model = model_cls(mcfg, tcfg, [None])
    return model


def _make_hubert_cfg(path: str, model_src: Any, task_src: Any, overrides: Mapping[str, float | None]) -> dict:
    hcfg, tcfg_cls, _ = _hubert_classes()
    task = _section(task_src, tcfg_cls)
    model = _section(model_src, hcfg)
    if not isinstance(model.get("label_rate"), (int, float)):  # interpolation "${task.label_rate}" in the dataclass
        model["label_rate"] = task.get("label_rate", -1.0)
    for key, val in overrides.items():
        if val is not None:
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
                raise ValueError(f"HuBERT override {key}={val!r} must be a finite number >= 0")
            model[key] = float(val)
    cfg = {"model": model, "task": task}
    json.dumps(cfg)  # guarantees the promise that the config is plain data
    return cfg


def build_hubert_from_cfg(hubert_cfg: Mapping[str, Any]) -> Any:
    """Rebuild the HuBERT architecture (random weights) from the plain config that :func:`load_hubert` returned.

    Used when a saved ST checkpoint is decoded after the HuBERT file is gone: the ST state dict supplies the weights.
    The result matches :func:`load_hubert`'s model parameter for parameter (no ``label_embs_concat``/``final_proj``).
    """
    if not isinstance(hubert_cfg, Mapping) or not {"model", "task"} <= set(hubert_cfg):
        raise ValueError("hubert_cfg must be a dict with 'model' and 'task' sections, as returned by load_hubert")
    model = _build(hubert_cfg)
    model.remove_pretraining_modules()
    return model


def hubert_output_dim(model: Any) -> int:
    """Width of ``extract_features`` output (768 for Base), which the ST encoder's adaptor must accept."""
    return int(model.encoder.embedding_dim)


def load_hubert(
    path: str | os.PathLike,
    *,
    dropout: float | None = None,
    attention_dropout: float | None = None,
    activation_dropout: float | None = None,
    encoder_layerdrop: float | None = None,
    feature_grad_mult: float | None = None,
    dropout_input: float | None = None,
    dropout_features: float | None = None,
    flag: str = "--hubert-model-path",
) -> tuple[Any, dict]:
    """Load a pretrained HuBERT checkpoint as a fairseq ``HubertModel`` ready for feature extraction.

    Returns ``(model, hubert_cfg)``. ``hubert_cfg = {"model": {...}, "task": {...}}`` holds only JSON types, carries the
    effective (overridden) values, and is enough for :func:`build_hubert_from_cfg`; ``hubert_cfg["task"]["normalize"]``
    says whether HuBERT expects standardised waveforms, for the dataset to compare with its data config. Override
    arguments left as None keep the checkpoint's values. Every problem raises :class:`CheckpointError` naming the file.
    """
    path = str(path)
    state = load_checkpoint(path, what="HuBERT checkpoint", flag=flag)
    fmt, model_src, task_src = _check_kind(path, state, flag)
    model_state = state["model"]
    _check_finite(path, model_state)
    overrides = {
        "dropout": dropout,
        "attention_dropout": attention_dropout,
        "activation_dropout": activation_dropout,
        "encoder_layerdrop": encoder_layerdrop,
        "feature_grad_mult": feature_grad_mult,
        "dropout_input": dropout_input,
        "dropout_features": dropout_features,
    }
    hubert_cfg = _make_hubert_cfg(path, model_src, task_src, overrides)
    try:
        model = _build(hubert_cfg)
    except Exception as err:  # noqa: BLE001 - a bad config is reported against the file it came from
        raise CheckpointError(f"{path}: cannot build HubertModel from its config: {err}") from err

    renames, _ = fmt.map_keys(list(model_state))  # drops the pretraining-only tensors
    weights = {ours: model_state[theirs] for ours, theirs in renames.items()}
    own = {k for k in model.state_dict() if not k.startswith(PRETRAINING_ONLY_PREFIXES)}
    missing = sorted(own - set(weights))
    unexpected = sorted(set(weights) - own)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the HuBERT architecture in its own config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    model.remove_pretraining_modules()
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the HuBERT architecture in its config: {err}") from err
    logger.info(
        "loaded HuBERT from %s: %d layers, dim %d, normalize=%s",
        path,
        hubert_cfg["model"]["encoder_layers"],
        hubert_output_dim(model),
        hubert_cfg["task"]["normalize"],
    )
    return model, hubert_cfg
