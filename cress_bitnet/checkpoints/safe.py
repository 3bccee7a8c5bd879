"""Safe checkpoint loading for fairseq, HuBERT and DeltaLM files under ``torch.load(weights_only=True)``.

torch >= 2.6 refuses to unpickle anything but tensors and plain containers by default. fairseq checkpoints also hold
an ``argparse.Namespace`` (legacy ``args`` and legacy-arch ``cfg["model"]``), ``fairseq.data.dictionary.Dictionary``
(HuBERT ``task_state``), numpy arrays and scalars (trainer metrics such as ``_bleu_counts``) and, for states re-saved
after ``load_checkpoint_to_cpu``, omegaconf containers. We allow exactly those classes, process-wide, when the plugin is
imported, so fairseq's own ``torch.load`` calls keep the restricted unpickler. Nothing here ever falls back to full
pickle: a file that needs another global fails with a message naming the file and the global.

torch honours ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` for every ``torch.load`` that passes no ``weights_only`` -- which is
every load fairseq makes (trainer restore, ``fairseq-generate``) -- and then unpickles arbitrary code with only a
warning. :func:`refuse_unsafe_environment` makes that variable an error for every checkpoint read through the plugin.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import pickle
import re
import typing
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, of the wrong kind or needs an unsafe global."""


def _numpy_globals() -> list[Any]:
    core = np._core.multiarray
    found: list[Any] = [np.ndarray, np.dtype]
    # numpy>=2 pickles say numpy._core, numpy 1.x pickles say numpy.core: allow both names for the same objects.
    for name in ("_reconstruct", "scalar"):
        obj = getattr(core, name)
        found += [(obj, f"numpy._core.multiarray.{name}"), (obj, f"numpy.core.multiarray.{name}")]
    # dtype instances are rebuilt from their class (e.g. numpy.dtypes.Int64DType), which torch does not report.
    for t in ("int64", "int32", "int16", "int8", "uint8", "float64", "float32", "float16", "bool"):
        found.append(type(np.dtype(t)))
    return found


def _omegaconf_globals() -> list[Any]:
    try:
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode
    except ImportError:  # pragma: no cover - omegaconf ships with fairseq
        return []
    return [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any, dict, list, int,
            collections.defaultdict]


def safe_globals() -> list[Any]:
    """The allowlist: every class a fairseq / HuBERT / DeltaLM checkpoint legitimately pickles."""
    found: list[Any] = [argparse.Namespace]
    try:
        from fairseq.data.dictionary import Dictionary

        found.append(Dictionary)
    except ImportError:  # the quantization library is usable without fairseq
        pass
    return found + _numpy_globals() + _omegaconf_globals()


@functools.cache
def register_safe_globals() -> None:
    """Register the allowlist once per process; fairseq workers import the user dir, so they get it too."""
    torch.serialization.add_safe_globals(safe_globals())


_GLOBAL_RE = re.compile(r"(?:Unsupported global: GLOBAL\s+|Can only build [^<]*<class ')([\w.]+)")


def explain_load_error(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    """A :class:`CheckpointError` naming ``path`` and what went wrong (unsafe global, truncation, not a checkpoint)."""
    path = str(path)
    text = str(err)
    match = _GLOBAL_RE.search(text)
    if match:
        return CheckpointError(
            f"{path}: refusing to load, the checkpoint needs the global '{match.group(1)}', which is not in "
            "cress_bitnet's allowlist of safe checkpoint classes (cress_bitnet/checkpoints/safe.py). Only load it with "
            "full pickle if you trust the file, and do so explicitly in your own code."
        )
    first = text.splitlines()[0] if text else type(err).__name__
    readable_zip = os.path.isfile(path) and zipfile.is_zipfile(path)
    if not readable_zip or isinstance(err, (EOFError, zipfile.BadZipFile, OSError)) or (
        "failed finding central directory" in text or "PytorchStreamReader" in text
    ):
        # torch.save writes a zip archive: no readable archive means a cut-off download or another kind of file
        return CheckpointError(f"{path}: the file is truncated or is not a torch checkpoint ({first})")
    if isinstance(err, pickle.UnpicklingError):
        return CheckpointError(f"{path}: not a loadable torch checkpoint ({first})")
    return CheckpointError(f"{path}: could not be loaded: {first}")


UNSAFE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_TRUE = ("1", "y", "yes", "true")  # the spellings torch.serialization accepts


def refuse_unsafe_environment(path: str | os.PathLike) -> None:
    """Refuse to read ``path`` while torch is told to fall back to full pickle (see the module docstring)."""
    if os.environ.get(UNSAFE_ENV, "0").strip().lower() in _TRUE:
        raise CheckpointError(
            f"{path}: refusing to load a checkpoint while {UNSAFE_ENV}={os.environ[UNSAFE_ENV]} is set: it makes torch "
            "unpickle arbitrary code in fairseq's own checkpoint loads; unset it (cress_bitnet only loads checkpoints "
            "with weights_only=True and its allowlist)"
        )


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint", flag: str | None = None) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with the allowlist, and errors that name the file and the flag."""
    register_safe_globals()
    refuse_unsafe_environment(path)
    where = f" (given by {flag})" if flag else ""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {path}{where}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure is re-raised with the file named
        raise explain_load_error(path, err) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}{where}: expected a dict checkpoint, found {type(state).__name__}")
    return state
