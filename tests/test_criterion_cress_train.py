"""fairseq-train with the CRESS criteria and CRESS's recipe flags on the toy corpus (FP hubert_transformer): the CRESS
stage, then the adaptive stage restoring its checkpoint as CRESS's recipe does, with --ctc-weight and KD on top.
The logged gold-token probability shows the epoch reaching the criterion (also after the restore)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import NO_HUBERT_DROPOUT, ToyData, fairseq, output

# CRESS's …cress.sh / …cress_adaptive.sh criterion flags (ictnlp/CRESS train_scripts), epochs shortened
CRESS_FLAGS = ["--criterion", "speech_and_text_translation_with_oracle_reg", "--reg-loss-type", "jsd",
               "--reg-weight", "1.0", "--use-word-level-oracle", "--decay-k", "15", "--use-word-gumbel-noise",
               "--gumbel-temperature", "1.0"]
ADAPTIVE_FLAGS = ["--criterion", "speech_and_text_translation_with_oracle_reg_adaptive", *CRESS_FLAGS[2:],
                  "--adaptive-base", "0.7", "--adaptive-scale", "0.05", "--adaptive-func", "linear_cosine",
                  "--adaptive-weight-drop", "0.0", "--adaptive-st-loss", "--adaptive-mt-loss", "--adaptive-reg-loss"]


def epoch_records(log: str) -> dict[int, dict]:
    """The end-of-epoch training records of a ``--log-format json`` run, by epoch."""
    records = {}
    for line in log.splitlines():
        if "| train |" in line and "{" in line:
            record = json.loads(line[line.index("{"):])
            records[int(record["epoch"])] = record
    return records


def gold(epoch: int) -> float:
    return 15 / (15 + math.exp(epoch / 15))


@pytest.mark.slow
def test_cress_then_adaptive_stage_train_with_ctc_and_kd(toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    common = ["--st-training", "--ddp-backend", "legacy_ddp", "--log-format", "json", "--required-batch-size-multiple",
              "1", "--max-sentences", "12", *NO_HUBERT_DROPOUT]
    cress = tmp_path / "cress"
    log1 = output(fairseq("train", toy.st_train_args(
        cress, *common, *CRESS_FLAGS, "--max-epoch", "2", "--ctc-weight", "0.3",
        "--load-pretrained-mt-encoder-decoder-from", str(toy.mt_checkpoint))))
    records = epoch_records(log1)
    assert sorted(records) == [1, 2], log1[-3000:]
    for epoch, rec in records.items():
        assert float(rec["train_gold_prob"]) == pytest.approx(gold(epoch), abs=1e-4)  # the epoch arrived
        for key in ("train_st_loss", "train_mt_loss", "train_reg_loss", "train_ctc_loss"):
            assert math.isfinite(float(rec[key])) and float(rec[key]) >= 0, key
        assert float(rec["train_reg_loss"]) > 0
    valid = [line for line in log1.splitlines() if "| valid |" in line]
    assert valid and all(re.search(r'"valid_st_loss": "?\d', line) for line in valid), valid or log1[-3000:]
    assert not any("valid_reg_loss" in line for line in valid)  # validation: ST only
    saved = torch.load(cress / "checkpoint_last.pt", weights_only=True)
    assert saved["cfg"]["criterion"]._name == "speech_and_text_translation_with_oracle_reg"

    # stage 2 as CRESS's recipe: --restore-file of the CRESS checkpoint (another criterion: --reset-optimizer)
    adaptive = tmp_path / "adaptive"
    log2 = output(fairseq("train", toy.st_train_args(
        adaptive, *common, *ADAPTIVE_FLAGS, "--max-epoch", "3", "--restore-file", str(cress / "checkpoint_last.pt"),
        "--reset-optimizer", "--kd-weight", "0.5", "--kd-teacher", str(fp_checkpoint))))
    records = epoch_records(log2)
    assert sorted(records) == [3], log2[-3000:]  # resumed after epoch 2
    rec = records[3]
    assert float(rec["train_gold_prob"]) == pytest.approx(gold(3), abs=1e-4)
    for key in ("train_st_loss", "train_mt_loss", "train_reg_loss", "train_kd_loss"):
        assert math.isfinite(float(rec[key])) and float(rec[key]) >= 0, key
    final = torch.load(adaptive / "checkpoint_last.pt", weights_only=True)
    assert set(final["model"]) == set(saved["model"])  # no teacher tensors in the student's checkpoint
