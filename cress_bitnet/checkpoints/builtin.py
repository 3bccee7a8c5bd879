"""The checkpoint formats this plugin knows out of the box (see :mod:`cress_bitnet.checkpoints.formats`).

HuBERT (legacy ``args`` and trainer ``cfg`` layouts), fairseq MT, DeltaLM, this plugin's ``hubert_transformer`` and
``quant_transformer`` (unpacked and packed, recognised by their quantization record), and the foreign ST formats of
CRESS (ictnlp/CRESS) and onebit-st (myaxxxxx/onebit-st, the public SVCD code). What CRESS/onebit-st files hold was
established by saving them with their own code: the same key names as ours plus
``encoder.hubert_model.label_embs_concat`` and, from fairseq 0.12.2, ``*.embed_positions._float_tensor``; saved args
without any HuBERT architecture; onebit-st's SVCD ``BitLinear`` cross-attention with ``weight``, ``bias``, ``g``,
``h``, ``norm.*`` and nothing in its args naming the swapped modules.
"""

from __future__ import annotations

import json
import logging
import os
import re
from argparse import Namespace
from collections.abc import Iterable, Mapping
from typing import Any

from cress_bitnet.checkpoints.args import saved_arch, saved_model_args
from cress_bitnet.checkpoints.formats import (
    CheckpointFormat,
    KeyMap,
    UpgradeReport,
    register_format,
    rewrite_weights,
)

logger = logging.getLogger(__name__)

# HuBERT tensors only the pretraining loss uses; a speech-translation model never needs them.
PRETRAINING_ONLY_PREFIXES = ("label_embs_concat", "final_proj.", "target_glu.")
HUBERT_PREFIX = "encoder.hubert_model."
# Model-args field: the waveform standardization the model was trained with (True/False; absent: unknown).
STANDARDIZED_AUDIO_ARG = "trained_on_standardized_audio"
# Model-args field read by quant_transformer: which modules are quantized, how, packed or not (JSON).
QUANT_RECORD_ARG = "quant_record"
QUANT_RECORD_VERSION = 1

CRESS_ARCHS = ("hubert_transformer", "hubert_transformer_postln", "hubert_transformer_pruning_layer",
               "hubert_transformer_pruning_layer_postln")
QUANT_ARCHS = ("quant_transformer", "quant_transformer_postln")
# onebit-st's BitLinear (SVCD) parameters beside weight/bias; ours (SVCDLinear) uses the same names.
_BITLINEAR_MARK = re.compile(r"^(decoder\.layers\.\d+\.[\w.]+)\.(g|h|norm\.weight)$")

_FLOAT_TENSOR = "sinusoidal-position buffer written by fairseq <= 0.12.2 (no weights; rebuilt on load)"
_PRETRAINING_ONLY = "HuBERT pretraining-only tensor, unused by speech translation"
_LABEL_EMBS = ("HuBERT pretraining label embeddings (CRESS builds HuBERT with its k-means label dictionaries); "
               "only the pretraining loss uses them")


def _weights(state: Mapping[str, Any]) -> Mapping[str, Any]:
    found = state.get("model")
    return found if isinstance(found, Mapping) else {}


def _has_prefix(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _arch_of(state: Mapping[str, Any]) -> str | None:
    return saved_arch(state)


# ---------------------------------------------------------------- HuBERT


def _hubert_keys(keys: Iterable[str]) -> KeyMap:
    renames, dropped = {}, {}
    for key in keys:
        if key.startswith(PRETRAINING_ONLY_PREFIXES):
            dropped[key] = _PRETRAINING_ONLY
        else:
            renames[key] = key
    return renames, dropped


def _is_hubert_legacy(state: Mapping[str, Any]) -> bool:
    args = state.get("args")
    return isinstance(args, Namespace) and getattr(args, "arch", None) == "hubert" and "model" in state


def _is_hubert_cfg(state: Mapping[str, Any]) -> bool:
    if isinstance(state.get("args"), Namespace) or "model" not in state:
        return False
    args = saved_model_args(state)
    return args is not None and (getattr(args, "_name", None) or getattr(args, "arch", None)) == "hubert"


# ---------------------------------------------------------------- MT


def _drop_bookkeeping(key: str) -> str | None:
    if key.endswith("._float_tensor"):
        return _FLOAT_TENSOR
    if key.endswith(".version") or key == "version":
        return "fairseq's module-version bookkeeping buffer"
    return None


def _fairseq_mt_keys(keys: Iterable[str]) -> KeyMap:
    """fairseq ``transformer`` names its text encoder layers ``encoder.layers``; ours (and CRESS's) are
    ``encoder.transformer_layers`` (the renaming CMOT applies to load such MT checkpoints)."""
    renames, dropped = {}, {}
    for key in keys:
        why = _drop_bookkeeping(key)
        if why:
            dropped[key] = why
        elif key.startswith("encoder.layers."):
            renames["encoder.transformer_layers." + key[len("encoder.layers."):]] = key
        else:
            renames[key] = key
    return renames, dropped


def _is_fairseq_mt(state: Mapping[str, Any]) -> bool:
    keys = list(_weights(state))
    return _has_prefix(keys, "encoder.layers.", "decoder.layers.") and not _has_prefix(
        keys, HUBERT_PREFIX, "encoder.transformer_layers.", "feature_extractor.")


def _deltalm_keys(keys: Iterable[str]) -> KeyMap:
    """unilm's DeltaLM names: ``src_embedding.``/``tgt_embedding.`` prefixes, ``ffn_1.fc1/fc2`` -> ``fc3/fc4``, the
    ``ffn_2.`` and ``ffn.`` infixes dropped, ``emb_layer_norm`` -> ``layernorm_embedding``."""
    renames, dropped = {}, {}
    for orig in keys:
        why = _drop_bookkeeping(orig)
        if why:
            dropped[orig] = why
            continue
        key = orig
        for src, dst in (("src_embedding.", "encoder."), ("tgt_embedding.", "decoder.")):
            if key.startswith(src):
                key = dst + key[len(src):]
        key = key.replace("emb_layer_norm", "layernorm_embedding")
        key = key.replace(".ffn_1.fc1.", ".fc3.").replace(".ffn_1.fc2.", ".fc4.")
        key = key.replace(".ffn_2.", ".").replace(".ffn.", ".")
        if key.startswith("encoder.layers."):
            key = "encoder.transformer_layers." + key[len("encoder.layers."):]
        renames[key] = orig
    return renames, dropped


def _is_deltalm(state: Mapping[str, Any]) -> bool:
    weights = state.get("weights")
    return "model" not in state and isinstance(weights, Mapping) and _has_prefix(
        weights, "src_embedding.", "tgt_embedding.", "decoder.layers.")


# ---------------------------------------------------------------- speech translation (ours)


def _quant_record(state: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = getattr(saved_model_args(state), QUANT_RECORD_ARG, None)
    if not raw:
        return None
    try:
        record = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_packed(state: Mapping[str, Any]) -> bool:
    record = _quant_record(state)
    return record is not None and bool(record.get("packed"))


def _is_quant(state: Mapping[str, Any]) -> bool:
    record = _quant_record(state)
    return record is not None and not record.get("packed")


def _is_native_st(state: Mapping[str, Any]) -> bool:
    args = saved_model_args(state)
    return bool(getattr(args, "hubert_cfg", None)) and _has_prefix(_weights(state), HUBERT_PREFIX)


# ---------------------------------------------------------------- CRESS / onebit-st


def _foreign_st_keys(keys: Iterable[str]) -> KeyMap:
    renames, dropped = {}, {}
    for key in keys:
        if key.startswith(HUBERT_PREFIX) and key[len(HUBERT_PREFIX):].startswith(PRETRAINING_ONLY_PREFIXES):
            dropped[key] = _LABEL_EMBS if key.endswith("label_embs_concat") else _PRETRAINING_ONLY
        elif key.endswith("._float_tensor"):
            dropped[key] = _FLOAT_TENSOR
        else:
            renames[key] = key
    return renames, dropped


def _no_plugin_record(args: Namespace | None) -> bool:
    return args is not None and not getattr(args, "hubert_cfg", None) and not getattr(args, QUANT_RECORD_ARG, None) \
        and not getattr(args, "quant_modules", None)


def _bitlinear_modules(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    found = set()
    for key in keys:
        match = _BITLINEAR_MARK.match(key)
        if match:
            name = match.group(1)
            if {f"{name}.g", f"{name}.h", f"{name}.norm.weight", f"{name}.weight"} <= keys:
                found.add(name)
    return sorted(found)


def _is_onebit_svcd(state: Mapping[str, Any]) -> bool:
    args = saved_model_args(state)
    return (_no_plugin_record(args) and getattr(args, "arch", None) in QUANT_ARCHS
            and bool(_bitlinear_modules(_weights(state))))


def _is_cress(state: Mapping[str, Any]) -> bool:
    args = saved_model_args(state)
    keys = list(_weights(state))
    return (_no_plugin_record(args) and _has_prefix(keys, "encoder.transformer_layers.", HUBERT_PREFIX)
            and getattr(args, "arch", None) not in QUANT_ARCHS)


def _upgrade_cress_args(args: Namespace, report: UpgradeReport) -> None:
    """What a CRESS-style args Namespace lacks or holds that does not apply on this machine."""
    mt_path = getattr(args, "load_pretrained_mt_encoder_decoder_from", None)
    if mt_path:
        state = "exists" if os.path.exists(mt_path) else "no longer exists"
        report.set_arg(args, "load_pretrained_mt_encoder_decoder_from", None,
                       f"the stored MT checkpoint path {mt_path} ({state}) is not needed: the checkpoint holds the "
                       "trained weights")
    if not getattr(args, "hubert_cfg", None):
        path = getattr(args, "hubert_model_path", None)
        if path and os.path.isfile(path):
            report.note(f"stores no HuBERT architecture: it will be read from its hubert_model_path {path}")
        else:
            report.note(f"stores no HuBERT architecture and its hubert_model_path {path} does not exist here; building "
                        f"the model needs a HuBERT checkpoint of the same architecture: {HUBERT_FLAG_HINT}")
    if getattr(args, STANDARDIZED_AUDIO_ARG, None) is None:
        report.set_arg(args, STANDARDIZED_AUDIO_ARG, True,
                       "CRESS/onebit-st layer-normalise every waveform (fairseq 0.12's standardize_audio is a method, "
                       "so their check is always true); the model expects standardized input")


HUBERT_FLAG_HINT = ("pass --hubert-model-path PATH (fairseq-train, --pretrained-st-checkpoint, --kd-teacher) or "
                    "--model-overrides \"{'hubert_model_path': 'PATH'}\" (fairseq-generate)")


def audio_standardization(saved_args: Any, configured: bool, config_path: Any) -> bool:
    """The waveform standardization to feed a model: the one it was trained with when its args record it.

    A model must see the inputs it was trained on: CRESS-trained models expect standardized waveforms even though
    their ``config.yaml`` says nothing (see :func:`_upgrade_cress_args`). When the data config disagrees with the
    checkpoint we follow the checkpoint and say so, with the line that makes the config agree.
    """
    saved = getattr(saved_args, STANDARDIZED_AUDIO_ARG, None) if saved_args is not None else None
    if saved is None or bool(saved) == bool(configured):
        return bool(configured) if saved is None else bool(saved)
    logger.warning(
        f"the checkpoint was trained on {'standardized' if saved else 'raw (unstandardized)'} waveforms but "
        f"{config_path} has standardize_audio: {str(bool(configured)).lower()}; following the checkpoint "
        f"(standardize_audio={str(bool(saved)).lower()}). To make this explicit, set "
        f"'standardize_audio: {str(bool(saved)).lower()}' in {config_path}"
    )
    return bool(saved)


def _upgrade_cress(state: dict[str, Any], report: UpgradeReport) -> None:
    rewrite_weights(state, report.format, report)
    args = saved_model_args(state)
    if args is not None:
        _upgrade_cress_args(args, report)


def seed_svcd_record(modules: Iterable[str]) -> dict[str, Any]:
    """The quantization record of onebit-st's SVCD layers: method svcd, the seed's whole-tensor activation rescale."""
    spec = {"method": "svcd", "init": "constraint", "act_quant": "seed", "num_groups": 1}
    return {"version": QUANT_RECORD_VERSION, "packed": False, "modules": {m: dict(spec) for m in sorted(modules)}}


def _upgrade_onebit_svcd(state: dict[str, Any], report: UpgradeReport) -> None:
    _upgrade_cress(state, report)
    args = saved_model_args(state)
    modules = _bitlinear_modules(_weights(state))
    if args is not None and modules:
        report.set_arg(args, QUANT_RECORD_ARG, json.dumps(seed_svcd_record(modules), sort_keys=True),
                       f"onebit-st BitLinear (SVCD, seed activation rescale) found in {len(modules)} modules "
                       f"({', '.join(modules[:4])}{', ...' if len(modules) > 4 else ''})")


def _is_quant_v0(state: Mapping[str, Any]) -> bool:
    args = saved_model_args(state)
    return bool(getattr(args, "quant_modules", None)) and not getattr(args, QUANT_RECORD_ARG, None)


def _upgrade_quant_v0(state: dict[str, Any], report: UpgradeReport) -> None:
    """cress_bitnet 0.1 stored quant_method/quant_modules/quant_options/quant_plan/quant_packed: one record now."""
    from cress_bitnet.quantization.record import LEGACY_FIELDS, QuantRecord

    args = saved_model_args(state)
    record = QuantRecord.from_legacy_args(args)
    report.set_arg(args, QUANT_RECORD_ARG, record.to_json(), f"cress_bitnet 0.1 quant_* args: {record.summary()}")
    for name in LEGACY_FIELDS:
        if hasattr(args, name):
            delattr(args, name)


# ---------------------------------------------------------------- registration


def _register_builtin() -> None:
    st_arch = _arch_of
    for fmt in (
        CheckpointFormat("cress_bitnet_packed", "a packed quant_transformer checkpoint (cress-bitnet-export)",
                         frozenset({"st"}), _is_packed, arch="quant_transformer", priority=60),
        CheckpointFormat("cress_bitnet_quant_v0", "a quant_transformer checkpoint of cress_bitnet 0.1 (quant_* args)",
                         frozenset({"st"}), _is_quant_v0, arch="quant_transformer", upgrade=_upgrade_quant_v0,
                         priority=65),
        CheckpointFormat("cress_bitnet_quant", "a quant_transformer checkpoint with its quantization record",
                         frozenset({"st"}), _is_quant, arch="quant_transformer", priority=50),
        CheckpointFormat("onebit_st_svcd", "an onebit-st SVCD checkpoint (BitLinear cross-attention)",
                         frozenset({"st"}), _is_onebit_svcd, arch="quant_transformer", map_keys=_foreign_st_keys,
                         upgrade=_upgrade_onebit_svcd, priority=40),
        CheckpointFormat("hubert_transformer", "a hubert_transformer speech-translation checkpoint",
                         frozenset({"st", "mt"}), _is_native_st, arch=st_arch, priority=30),
        CheckpointFormat("cress", "a CRESS / onebit-st FP speech-translation checkpoint (no HuBERT config in its args)",
                         frozenset({"st", "mt"}), _is_cress, arch=st_arch, map_keys=_foreign_st_keys,
                         upgrade=_upgrade_cress, priority=20),
        CheckpointFormat("fairseq_transformer", "a fairseq MT checkpoint", frozenset({"mt"}), _is_fairseq_mt,
                         arch=_arch_of, map_keys=_fairseq_mt_keys, priority=10),
        CheckpointFormat("deltalm", "a DeltaLM pretrained checkpoint ({'weights': ...})", frozenset({"mt"}),
                         _is_deltalm, arch="deltalm", map_keys=_deltalm_keys, weights_entry="weights", priority=10),
        CheckpointFormat("hubert_legacy", "a HuBERT checkpoint (legacy 'args' layout)", frozenset({"hubert"}),
                         _is_hubert_legacy, arch="hubert", map_keys=_hubert_keys, priority=10),
        CheckpointFormat("hubert_cfg", "a HuBERT checkpoint (trainer 'cfg' layout)", frozenset({"hubert"}),
                         _is_hubert_cfg, arch="hubert", map_keys=_hubert_keys, priority=10),
    ):
        register_format(fmt, replace=True)


_register_builtin()
