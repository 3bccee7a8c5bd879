"""Checkpoints as safetensors files: tensors plus a JSON header, read without any unpickling.

safetensors (https://github.com/huggingface/safetensors) stores raw tensor bytes behind a JSON header; its reader
never runs pickle, so a downloaded file cannot execute code even in principle — stronger than our
``torch.load(weights_only=True)`` allowlist. The header's ``__metadata__`` (string to string) holds:

* ``format`` / ``format_version``: ``cress_bitnet.trainer_state`` / ``1``;
* ``model_args``: the model's argparse Namespace (``cfg["model"]``), its JSON-able fields, enough to rebuild the model
  (the quantization record is one of them, ``quant_record``, and repeated as ``quant_record`` for readers);
* ``num_updates``: the training step, which fairseq sets on the model before loading;
* ``tied``: JSON ``{alias: stored_key}`` for tensors that share storage (a text encoder's and a decoder's shared
  embedding, an output projection tied to the embedding): each is stored once and tied again when read;
* ``task_state``: JSON of the task state's string entries (data config, dictionary — see
  :mod:`cress_bitnet.resources`); its tensors (the SentencePiece model) are stored as ``task_state.NAME``.

Model tensors are stored as ``model.KEY``. :func:`load_state` turns the file back into a trainer-format checkpoint dict
that fairseq's ``load_checkpoint_to_cpu`` would return; the plugin's wrapper of that function calls
:func:`fairseq_load_checkpoint` for these files, so ``fairseq-generate --path x.safetensors`` works.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cress_bitnet.fileio import atomic_output

FORMAT = "cress_bitnet.trainer_state"
FORMAT_VERSION = 1
MODEL_PREFIX = "model."
TASK_PREFIX = "task_state."


class SafetensorsFormatError(ValueError):
    """A safetensors file that is not a cress_bitnet checkpoint, or a state that cannot be written as one."""


def is_safetensors(path: str | os.PathLike) -> bool:
    """True for a safetensors file: an 8-byte little-endian header length, then a JSON object (torch.save: a zip)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return _SKIP


_SKIP = object()


def namespace_to_json(args: argparse.Namespace) -> str:
    """The Namespace's JSON-able fields (tuples become lists); others (none in our models' args) are dropped."""
    fields = {k: _jsonable(v) for k, v in vars(args).items()}
    return json.dumps({k: v for k, v in fields.items() if v is not _SKIP}, sort_keys=True)


def _view_key(t: Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype]:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype


def split_tied(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors to store (each storage once, contiguous) and ``{alias: stored_key}`` for exact views of stored ones.

    Views that overlap a storage without being the same view are copied: safetensors refuses shared storage.
    """
    stored: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    by_view: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, value in tensors.items():
        view = _view_key(value)
        if view in by_view:
            tied[key] = by_view[view]
            continue
        by_view[view] = key
        ptr = value.untyped_storage().data_ptr()
        shared = ptr in storages or value.untyped_storage().nbytes() != value.numel() * value.element_size()
        storages.add(ptr)
        stored[key] = value.detach().clone() if shared else value.detach().contiguous()
    return stored, tied


def _model_args(state: dict[str, Any]) -> argparse.Namespace:
    cfg = state.get("cfg")
    args = cfg.get("model") if cfg is not None else None
    if not isinstance(args, argparse.Namespace):
        args = state.get("args")
    if not isinstance(args, argparse.Namespace):
        raise SafetensorsFormatError("checkpoint has neither cfg['model'] nor args as an argparse.Namespace")
    return args


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a trainer-format checkpoint dict (model tensors, model args, task state) as a safetensors file."""
    from safetensors.torch import save_file

    args = _model_args(state)
    model, tied = split_tied(state["model"])
    tensors = {MODEL_PREFIX + k: v for k, v in model.items()}
    task_strings: dict[str, Any] = {}
    for key, value in (state.get("task_state") or {}).items():
        if isinstance(value, Tensor):
            tensors[TASK_PREFIX + key] = value.detach().contiguous()
        elif _jsonable(value) is not _SKIP:
            task_strings[key] = value
        else:
            raise SafetensorsFormatError(f"task_state[{key!r}] ({type(value).__name__}) cannot be stored")
    history = state.get("optimizer_history") or [{}]
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_args": namespace_to_json(args),
        "quant_record": str(getattr(args, "quant_record", "") or ""),
        "num_updates": str(int(history[-1].get("num_updates", 0) or 0)),
        "tied": json.dumps(tied, sort_keys=True),
        "task_state": json.dumps(task_strings, sort_keys=True),
    }
    with atomic_output(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A trainer-format checkpoint dict (args, model, task_state, ...) from a safetensors file, without pickle."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise SafetensorsFormatError(
                    f"{path}: a safetensors file but not a cress_bitnet checkpoint (metadata format "
                    f"{metadata.get('format')!r}, want {FORMAT!r}); write one with cress-bitnet-export --format "
                    "safetensors")
            if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
                raise SafetensorsFormatError(f"{path}: format version {metadata['format_version']} is newer than this "
                                             "cress_bitnet reads; upgrade cress_bitnet")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except SafetensorError as err:
        raise SafetensorsFormatError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        model = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
        for alias, key in json.loads(metadata["tied"]).items():
            model[alias] = model[key]
        task_state: dict[str, Any] = json.loads(metadata["task_state"])
        task_state.update({k[len(TASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(TASK_PREFIX)})
        args = argparse.Namespace(**json.loads(metadata["model_args"]))
        num_updates = int(metadata["num_updates"])
    except (KeyError, ValueError) as err:
        raise SafetensorsFormatError(f"{path}: damaged cress_bitnet metadata ({type(err).__name__}: {err})") from err
    return {
        "args": args,
        "model": model,
        "task_state": task_state,
        "optimizer_history": [{"criterion_name": getattr(args, "criterion", None), "optimizer_name": None,
                               "lr_scheduler_state": {}, "num_updates": num_updates}],
        "extra_state": {"train_iterator": None},
    }


def fairseq_load_checkpoint(path: str | os.PathLike, arg_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What fairseq's ``load_checkpoint_to_cpu`` returns for a safetensors file: overrides applied, cfg built."""
    from fairseq import checkpoint_utils

    state = load_state(path)
    for name, value in (arg_overrides or {}).items():
        setattr(state["args"], name, value)
    return checkpoint_utils._upgrade_state_dict(state)
