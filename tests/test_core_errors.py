"""Issue 2 bad inputs: each ends in one clear error naming the file, line or flag, not a fairseq traceback."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
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


def edit_manifest(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


def drop_column(name: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        col = lines[0].split("\t").index(name)
        return ["\t".join(f for i, f in enumerate(line.split("\t")) if i != col) for line in lines]

    return edit


def set_audio(row: int, value: Callable[[str], str]) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        fields = lines[row].split("\t")
        fields[1] = value(fields[1])
        lines[row] = "\t".join(fields)
        return lines

    return edit


def _past_end(audio: str) -> str:
    path, offset, n = audio.rsplit(":", 2)
    return f"{path}:{int(offset) + 10**7}:{n}"


MANIFEST_CASES = {
    "missing column": (drop_column("tgt_text"), r"dev\.tsv.*tgt_text"),
    "audio file missing": (set_audio(2, lambda a: a.replace(".wav", "_gone.wav")), r"dev\.tsv:3.*_gone\.wav"),
    "segment past end": (set_audio(1, _past_end), r"dev\.tsv:2.*(past|beyond|end)"),
    "empty manifest": (lambda lines: lines[:1], r"dev\.tsv.*(empty|no rows)"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifest(case: str, toy: ToyData, tmp_path: Path) -> None:
    edit, pattern = MANIFEST_CASES[case]
    data = copy_data(toy, tmp_path)
    edit_manifest(data / "dev.tsv", edit)
    task, _ = build_task(data, "--hubert-model-path", str(toy.hubert))
    with pytest.raises(ValueError, match=re.compile(pattern, re.I | re.S)) as err:
        task.load_dataset("dev")
    assert str(data / "dev.tsv") in str(err.value)


def test_missing_data_config(toy: ToyData, tmp_path: Path) -> None:
    data = copy_data(toy, tmp_path)
    with pytest.raises(ValueError, match=r"data config not found: .*nope\.yaml.*--config-yaml"):
        build_task(data, "--config-yaml", "nope.yaml")


def _truncate(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


CHECKPOINT_CASES = {
    "missing hubert": (lambda toy, tmp: ["--hubert-model-path", str(tmp / "nope.pt")],
                       r"not found: .*nope\.pt \(given by --hubert-model-path\)"),
    "missing mt": (lambda toy, tmp: ["--hubert-model-path", str(toy.hubert),
                                     "--load-pretrained-mt-encoder-decoder-from", str(tmp / "nope_mt.pt")],
                   r"not found: .*nope_mt\.pt \(given by --load-pretrained-mt-encoder-decoder-from\)"),
    "truncated mt": (lambda toy, tmp: ["--hubert-model-path", str(toy.hubert),
                                       "--load-pretrained-mt-encoder-decoder-from",
                                       str(_truncate(toy.mt_checkpoint, tmp / "half.pt"))],
                     r"half\.pt.*truncated"),
    "truncated hubert": (lambda toy, tmp: ["--hubert-model-path", str(_truncate(toy.hubert, tmp / "h.pt"))],
                         r"h\.pt.*truncated"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint(case: str, toy: ToyData, tmp_path: Path) -> None:
    flags, pattern = CHECKPOINT_CASES[case]
    task, args = build_task(toy.st_dir, *flags(toy, tmp_path))
    with pytest.raises(RuntimeError, match=pattern):
        task.build_model(args)


def test_dictionary_mismatch_with_mt_checkpoint(toy: ToyData, tmp_path: Path) -> None:
    data = copy_data(toy, tmp_path)
    vocab = next(data.glob("spm_unigram*.txt"))
    vocab.write_text(vocab.read_text(encoding="utf-8") + "extra_piece_1 1\nextra_piece_2 1\n", encoding="utf-8")
    task, args = build_task(data, "--hubert-model-path", str(toy.hubert),
                            "--load-pretrained-mt-encoder-decoder-from", str(toy.mt_checkpoint))
    with pytest.raises(RuntimeError, match=r"checkpoint_last\.pt .*embed_tokens.weight has \d+ rows but the "
                                           r"dictionary has \d+ entries"):
        task.build_model(args)


def test_mt_text_binarized_with_another_dictionary(toy: ToyData, tmp_path: Path) -> None:
    data = copy_data(toy, tmp_path)
    vocab = next(data.glob("spm_unigram*.txt"))
    vocab.write_text(vocab.read_text(encoding="utf-8") + "extra_piece 1\n", encoding="utf-8")
    task, _ = build_task(data, "--ext-mt-training", "--text-data", str(toy.mt_bin), "--tgt-lang", "de")
    with pytest.raises(ValueError, match=r"dict\.en\.txt: \d+ entries, but the speech data's vocabulary has \d+"):
        task.load_dataset("train")


def test_max_tokens_smaller_than_an_utterance(toy: ToyData) -> None:
    task, _ = build_task(toy.st_dir, "--hubert-model-path", str(toy.hubert))
    task.load_dataset("dev")
    with pytest.raises(ValueError, match=r"--max-tokens 1000 is smaller than the longest example \(\d+ audio samples"):
        task.get_batch_iterator(task.dataset("dev"), max_tokens=1000)
