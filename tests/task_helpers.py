"""Helpers shared by the test files that build the task in-process on copies of the toy data."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from conftest import REPO, TINY_MODEL_ARGS, ToyData
from fairseq import options, tasks

import cress_bitnet  # noqa: F401  (registers the task/model/criterion)


def build_task(data: Path, *extra: str):  # noqa: ANN201
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--st-training", "--arch", "hubert_transformer_postln", *TINY_MODEL_ARGS, "--conv-channels", "32",
        "--max-tokens", "400000", *extra,
    ])
    return tasks.setup_task(args), args


def copy_data(toy: ToyData, tmp: Path) -> Path:
    dst = tmp / "data"
    shutil.copytree(toy.st_dir, dst, ignore=shutil.ignore_patterns("binary"))
    return dst


def snapshot(root: Path) -> dict[str, str]:
    """sha1 of every file under ``root``: a failed command must leave it exactly as it was (nothing written or lost)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}
