"""Safe checkpoint loading for fairseq, HuBERT and DeltaLM files under ``torch.load(weights_only=True)``.

torch >= 2.6 refuses to unpickle anything but tensors and plain containers by default. fairseq checkpoints also hold
an ``argparse.Namespace`` (legacy ``args`` and legacy-arch ``cfg["model"]``), ``fairseq.data.dictionary.Dictionary``
(HuBERT ``task_state``), numpy arrays and scalars (trainer metrics such as ``_bleu_counts``) and, for states re-saved
after ``load_checkpoint_to_cpu``, omegaconf containers. We allow exactly those classes, process-wide, when the plugin is
imported, so fairseq's own ``torch.load`` calls keep the restricted unpickler. Nothing here ever falls back to full
pickle: a file that needs another global fails with a message naming the file and the global.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import pickle
import re
import shutil
import typing
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cress_bitnet.fileio import atomic_output


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


def _explain(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    path = str(path)
    text = str(err)
    match = _GLOBAL_RE.search(text)
    if match:
        return CheckpointError(
            f"{path}: refusing to load, the checkpoint needs the global '{match.group(1)}', which is not in "
            "cress_bitnet's allowlist of safe checkpoint classes (cress_bitnet/checkpoints.py). Only load it with full "
            "pickle if you trust the file, and do so explicitly in your own code."
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


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint", flag: str | None = None) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with the allowlist, and errors that name the file and the flag."""
    register_safe_globals()
    where = f" (given by {flag})" if flag else ""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {path}{where}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure is re-raised with the file named
        raise _explain(path, err) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}{where}: expected a dict checkpoint, found {type(state).__name__}")
    return state


def _atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """Copy through a temporary file and an atomic rename, so a kill mid-copy never leaves a truncated file."""
    if os.path.exists(dst_path) and not overwrite:
        return False
    with atomic_output(dst_path) as tmp:
        shutil.copyfile(src_path, tmp)
    return True


def install_fairseq_fixes() -> None:
    """Crash safety and readable errors for fairseq's own checkpoint handling.

    * fairseq saves ``checkpointN.pt`` atomically but then *copies* it to ``checkpoint_last.pt`` with a plain
      ``shutil.copyfile``: a SIGKILL during that copy leaves a truncated ``checkpoint_last.pt`` that the next run
      cannot resume from. Local copies become copy-to-temp + atomic rename.
    * Trainer restores and fairseq-generate read checkpoints through ``load_checkpoint_to_cpu``; its unpickling and
      truncation errors are re-raised naming the file (behaviour on success is unchanged).
    """
    try:
        from fairseq.file_io import PathManager
    except ImportError:  # pragma: no cover
        return
    if not getattr(PathManager.copy, "_cress_bitnet_atomic", False):
        original_copy = PathManager.copy

        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if PathManager.path_requires_pathmanager(dst_path):
                return original_copy(src_path, dst_path, overwrite)
            return _atomic_copy(src_path, dst_path, overwrite)

        copy._cress_bitnet_atomic = True  # type: ignore[attr-defined]
        PathManager.copy = staticmethod(copy)
    install_fairseq_load_errors()


def install_fairseq_load_errors() -> None:
    """Make fairseq's own checkpoint reads (trainer restore, fairseq-generate) fail with the file named.

    The wrapper changes no behaviour on success; it only translates unpickling and truncation errors.
    """
    try:
        from fairseq import checkpoint_utils
    except ImportError:  # pragma: no cover
        return
    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_cress_bitnet_wrapped", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):  # type: ignore[no-untyped-def]
        from cress_bitnet import safetensors_format  # safetensors files are read without pickle (export --format)

        if safetensors_format.is_safetensors(path):
            return safetensors_format.fairseq_load_checkpoint(path, arg_overrides)
        try:
            return original(path, arg_overrides, load_on_all_ranks)
        except FileNotFoundError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, OSError) as err:
            raise _explain(path, err) from err

    load_checkpoint_to_cpu._cress_bitnet_wrapped = True  # type: ignore[attr-defined]
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
