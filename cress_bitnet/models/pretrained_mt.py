"""Initialise the text encoder and decoder from an MT checkpoint through explicit key maps.

CRESS strips ``encoder.``/``decoder.`` and loads with ``strict=False``, so a plain fairseq ``transformer`` checkpoint
silently loads no encoder layer (``encoder.layers.N`` vs ``encoder.transformer_layers.N``) and a wrong path is
ignored. Here every format has a key map, the result is reported (loaded / missing / unexpected), and a missing file,
a shape mismatch or a dictionary-size mismatch is an error.

Formats and their key maps come from the checkpoint registry (:mod:`cress_bitnet.checkpoints`): a plain fairseq MT
checkpoint (``encoder.layers.*``, also fine-tuned DeltaLM saved by fairseq), a ``hubert_transformer`` / CRESS
checkpoint (``encoder.transformer_layers.*``), and a pretrained DeltaLM file (``{"weights": ...}`` with
``src_embedding.* / tgt_embedding.* / ffn_1 / ffn_2`` names).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from cress_bitnet.checkpoints import CheckpointError, CheckpointFormat, detect_format, load_checkpoint

logger = logging.getLogger(__name__)

FLAG = "--load-pretrained-mt-encoder-decoder-from"
# Keys that exist only in the speech branch of the model, or only as bookkeeping in checkpoints.
_SPEECH_PREFIXES = ("encoder.hubert_model.", "encoder.subsampler.", "encoder.dim_proj.")
_DROP = re.compile(r"(^|\.)(_float_tensor|version)$")


@dataclass
class LoadReport:
    path: str
    fmt: str
    loaded: dict[str, str] = field(default_factory=dict)  # model key -> checkpoint key it was copied from
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    superseded: dict[str, str] = field(default_factory=dict)  # model key -> model key whose shared copy won

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.path} ({self.fmt})"]
        if self.missing:
            lines.append(f"  missing in checkpoint ({len(self.missing)}), left at init: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in checkpoint ({len(self.unexpected)}), ignored: {', '.join(self.unexpected)}")
        for key, winner in self.superseded.items():
            lines.append(f"  {key} is shared with {winner}, which was loaded last")
        return "\n".join(lines)


Mapped = dict[str, tuple[str, torch.Tensor]]  # model key -> (checkpoint key, tensor)


def map_weights(state: dict, path: str) -> tuple[CheckpointFormat, Mapped]:
    """The MT file's format (from the checkpoint registry) and its tensors under this model's key names."""
    fmt = detect_format(state, path, role="mt", flag=FLAG)
    weights = fmt.weights(state)
    renames, _ = fmt.map_keys(list(weights))  # bookkeeping buffers (version, _float_tensor) are dropped
    # The speech branch never comes from an MT checkpoint (CRESS skips it the same way); `version` is bookkeeping.
    return fmt, {ours: (theirs, weights[theirs]) for ours, theirs in renames.items()
                 if not ours.startswith(_SPEECH_PREFIXES) and not _DROP.search(ours)}


def _fit_embedding(key: str, value: torch.Tensor, target: torch.Tensor, path: str, fmt: str) -> torch.Tensor:
    """DeltaLM stores more embedding rows than its dict (span-corruption ids): keep the first rows, as unilm does."""
    if value.shape == target.shape:
        return value
    rows_ok = value.dim() == 2 and value.shape[1] == target.shape[1]
    if rows_ok and fmt == "deltalm" and value.shape[0] > target.shape[0]:
        return value[: target.shape[0]]
    if rows_ok and (key.endswith("embed_tokens.weight") or key.endswith("output_projection.weight")):
        raise CheckpointError(
            f"{path} ({FLAG}): {key} has {value.shape[0]} rows but the dictionary has {target.shape[0]} entries; "
            "the MT model was trained with a different dictionary than the data config's vocab_filename"
        )
    raise CheckpointError(
        f"{path} ({FLAG}): shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}; "
        "check the arch flags (--encoder-embed-dim, --encoder-ffn-embed-dim, layers, heads) against the MT model"
    )


def load_pretrained_mt(model: nn.Module, path: str) -> LoadReport:
    """Copy the MT checkpoint's text-encoder and decoder tensors into ``model`` (a hubert_transformer)."""
    state = load_checkpoint(path, what="MT checkpoint", flag=FLAG)
    fmt_entry, mapped = map_weights(state, path)
    fmt = fmt_entry.name
    # The speech branch never comes from an MT checkpoint, and the decoder's `version` buffer is bookkeeping.
    targets = {k: v for k, v in model.state_dict(keep_vars=True).items()
               if not k.startswith(_SPEECH_PREFIXES) and not _DROP.search(k)}
    report = LoadReport(path=path, fmt=fmt)
    # Several model keys may name one shared tensor (encoder/decoder embeddings, a tied output projection). Load
    # encoder keys first and decoder keys last, so the decoder's copy wins, as in CRESS and unilm.
    order = sorted(mapped, key=lambda k: (not k.startswith("encoder."), k))
    owner: dict[int, str] = {}
    with torch.no_grad():
        for key in order:
            source, value = mapped[key]
            if key not in targets:
                report.unexpected.append(source)
                continue
            target = targets[key]
            value = _fit_embedding(key, value, target, path, fmt)
            if not torch.isfinite(value).all():
                raise CheckpointError(f"{path} ({FLAG}): tensor {key} contains NaN or inf values")
            previous = owner.get(id(target))
            if previous is not None and previous != key:
                report.superseded[previous] = key
                report.loaded.pop(previous, None)
            target.copy_(value.to(target.dtype))
            owner[id(target)] = key
            report.loaded[key] = source
    loaded_ids = {id(targets[k]) for k in report.loaded} | {id(targets[k]) for k in report.superseded}
    report.missing = sorted(k for k, v in targets.items() if id(v) not in loaded_ids)
    logger.info(report.summary())
    return report
