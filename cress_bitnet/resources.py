"""What decoding needs besides the weights (data config, target dictionary, SentencePiece model), kept in checkpoints.

fairseq saves ``task.state_dict()`` (a :class:`fairseq.tasks.fairseq_task.StatefulContainer`) as the checkpoint's
``task_state`` and merges it back into the task when a model is loaded; fairseq's HuBERT pretraining task keeps its
dictionaries there the same way. The speech translation task stores three entries at training time, all loadable under
``torch.load(weights_only=True)`` (plain strings and a tensor, no pickled classes):

* ``cress_data_config``: the data config's keys as JSON (file names and ``audio_root`` dropped: they are local paths);
* ``cress_dictionary``: the target dictionary file's text (``dict.txt`` format);
* ``cress_spm_model``: the SentencePiece model's bytes as a uint8 tensor (absent when the config uses no SentencePiece).

``cress-bitnet-translate`` rebuilds a data-config folder from them (:func:`write_resources`), so a checkpoint decodes
audio without the training data; checkpoints saved before this existed need ``--data-config`` or ``--vocab`` /
``--spm-model``. Nothing here imports fairseq.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from cress_bitnet.data.data_config import SpeechDataConfig

CONFIG_KEY = "cress_data_config"
DICTIONARY_KEY = "cress_dictionary"
SPM_KEY = "cress_spm_model"
# Keys of the YAML that name local files: they are replaced by the files written next to the rebuilt config.
_LOCAL_KEYS = ("vocab_filename", "audio_root")
CONFIG_NAME, VOCAB_NAME, SPM_NAME = "config.yaml", "dict.txt", "spm.model"


class ResourceError(ValueError):
    """The checkpoint and the flags together do not give a data config, dictionary and SentencePiece model."""


def _spm_path(cfg: SpeechDataConfig) -> Path | None:
    bpe = cfg.bpe_tokenizer or {}
    if bpe.get("bpe") != "sentencepiece" or not bpe.get("sentencepiece_model"):
        return None
    return cfg.resolve(bpe["sentencepiece_model"])


def _portable_config(raw: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in raw.items() if k not in _LOCAL_KEYS}
    bpe = dict(out.get("bpe_tokenizer") or {})
    bpe.pop("sentencepiece_model", None)
    out["bpe_tokenizer"] = bpe
    return json.loads(json.dumps(out, default=str))  # plain JSON types only (YAML dates become strings)


def resources_from_data_config(cfg: SpeechDataConfig) -> dict[str, Any]:
    """The ``task_state`` entries for a data config: its keys, its dictionary text, its SentencePiece bytes."""
    state: dict[str, Any] = {
        CONFIG_KEY: json.dumps(_portable_config(cfg.raw), sort_keys=True),
        DICTIONARY_KEY: cfg.vocab_path.read_text(encoding="utf-8"),
    }
    spm = _spm_path(cfg)
    if spm is not None and spm.is_file():
        state[SPM_KEY] = torch.frombuffer(bytearray(spm.read_bytes()), dtype=torch.uint8)
    return state


def write_resources(
    task_state: dict[str, Any] | None,
    folder: str | Path,
    *,
    checkpoint: str = "checkpoint",
    data_config: str | Path | None = None,
    vocab: str | Path | None = None,
    spm_model: str | Path | None = None,
) -> Path:
    """Write ``config.yaml``, ``dict.txt`` (and ``spm.model``) into ``folder``; returns the config's path.

    Each piece comes from its flag if given (``--data-config``'s own vocabulary and SentencePiece model count as
    given), else from the checkpoint's ``task_state``; a missing piece raises :class:`ResourceError` naming the flag.
    """
    folder = Path(folder)
    if data_config is not None:  # the same entries the task stores at training time
        task_state = resources_from_data_config(SpeechDataConfig.load(data_config))
    task_state = task_state or {}
    config: dict[str, Any] | None = None
    vocab_text: str | None = None
    spm_bytes: bytes | None = None
    if task_state.get(CONFIG_KEY):
        config = json.loads(task_state[CONFIG_KEY])
        vocab_text = task_state.get(DICTIONARY_KEY)
        if isinstance(task_state.get(SPM_KEY), torch.Tensor):
            spm_bytes = task_state[SPM_KEY].numpy().tobytes()
    if vocab is not None:
        vocab_text = _read(vocab, "--vocab").decode("utf-8")
    if spm_model is not None:
        spm_bytes = _read(spm_model, "--spm-model")
    if config is None:
        if vocab is None or spm_model is None:
            raise ResourceError(
                f"{checkpoint} stores no data config (it was saved before cress_bitnet kept one in the checkpoint): "
                "pass --data-config CONFIG.yaml (the training data config), or --vocab DICT.txt and --spm-model "
                "SPM.model")
        config = {"bpe_tokenizer": {"bpe": "sentencepiece"}}
    if vocab_text is None:
        raise ResourceError(f"{checkpoint} stores no target dictionary: pass --vocab DICT.txt")
    bpe = dict(config.get("bpe_tokenizer") or {})
    if bpe.get("bpe") == "sentencepiece":
        if spm_bytes is None:
            raise ResourceError(f"{checkpoint} stores no SentencePiece model: pass --spm-model SPM.model")
        (folder / SPM_NAME).write_bytes(spm_bytes)
        bpe["sentencepiece_model"] = SPM_NAME
    (folder / VOCAB_NAME).write_text(vocab_text, encoding="utf-8")
    config = {**config, "bpe_tokenizer": bpe, "vocab_filename": VOCAB_NAME, "audio_root": ""}
    path = folder / CONFIG_NAME
    path.write_text(yaml.safe_dump(config, sort_keys=True, allow_unicode=True), encoding="utf-8")
    return path


def _read(path: str | Path, flag: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ResourceError(f"{flag}: file not found: {path}")
    return p.read_bytes()
