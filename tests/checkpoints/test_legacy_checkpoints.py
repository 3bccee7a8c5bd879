"""Checkpoints written by cress_bitnet 0.1 (four quant_* JSON args, int8 min/max codes) still decode and resume."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, ToyData, fairseq, output, quant_train_args

from cress_bitnet.quantization import QuantRecord

FIXTURES = REPO / "tests" / "fixtures" / "legacy_0_1"


@pytest.fixture(scope="module")
def legacy_data(toy: ToyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy corpus's manifests with the data config, SentencePiece model and dictionary the fixtures used."""
    data = tmp_path_factory.mktemp("legacy_data")
    for tsv in toy.st_dir.glob("*.tsv"):
        shutil.copy(tsv, data / tsv.name)
    for f in FIXTURES.iterdir():
        if f.suffix in (".yaml", ".model", ".txt", ".vocab"):
            shutil.copy(f, data / f.name)
    return data


def _hypotheses(log: str) -> list[str]:
    return [line for line in sorted(log.splitlines(), key=lambda s: s) if line.startswith("H-")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["legacy_svcd", "legacy_svcd_packed", "legacy_minmax_budget",
                                  "legacy_minmax_budget_packed"])
def test_legacy_checkpoint_decodes_as_before(name: str, legacy_data: Path) -> None:
    gen = output(fairseq("generate", [
        str(legacy_data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", "config.yaml", "--gen-subset", "tst-COMMON", "--path", str(FIXTURES / f"{name}.pt"),
        "--max-tokens", "400000", "--beam", "2", "--scoring", "sacrebleu", "--cpu"]))
    got = {h.split("\t")[0]: h.split("\t")[2] for h in _hypotheses(gen)}
    want = dict(line.split("\t", 1) for line in (FIXTURES / f"{name}.hyp").read_text().splitlines())
    assert len(want) == 6 and got == want


@pytest.mark.slow
@pytest.mark.parametrize("name", ["legacy_svcd", "legacy_minmax_budget"])
def test_legacy_checkpoint_resumes_without_the_fp_file(name: str, legacy_data: Path, toy: ToyData,
                                                       tmp_path: Path) -> None:
    save = tmp_path / "run"
    save.mkdir()
    shutil.copy(FIXTURES / f"{name}.pt", save / "checkpoint_last.pt")
    old = QuantRecord.from_args(torch.load(save / "checkpoint_last.pt", weights_only=True)["cfg"]["model"])
    toy_here = ToyData(toy.mustc_root, legacy_data, toy.mt_bin, toy.ckpt_dir, toy.mt_checkpoint)
    # the FP file named on the command line does not exist: the model must come from the checkpoint being resumed
    args = quant_train_args(toy_here, tmp_path / "gone.pt", save, "--max-update", "3", "--disable-validation")
    log = output(fairseq("train", args))
    assert "rebuilding the quantized model recorded in the checkpoint being resumed" in log
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 2 updates\)", log)
    assert "num_updates: 3 >= max_update: 3" in log
    saved = torch.load(save / "checkpoint_last.pt", weights_only=True)["cfg"]["model"]
    assert not hasattr(saved, "quant_modules") and not hasattr(saved, "quant_plan")  # re-saved with the record
    new = QuantRecord.from_args(saved)
    assert new.modules == old.modules and len(new.modules) == 20
    if name == "legacy_minmax_budget":
        assert len({c.bits for c in new.modules.values()}) == 2  # the per-module plan survived
