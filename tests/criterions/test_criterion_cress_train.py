"""fairseq-train with the CRESS criteria and CRESS's recipe flags on the toy corpus (FP hubert_transformer): the CRESS
stage, then the adaptive stage restoring its checkpoint as CRESS's recipe does, with --ctc-weight and KD on top.
The logged gold-token probability shows the epoch reaching the criterion (also after the restore)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import NO_HUBERT_DROPOUT, TGT, ToyData, fairseq, output, quant_train_args

from cress_bitnet.checkpoints import load_checkpoint

# CRESS's …cress.sh / …cress_adaptive.sh criterion flags (ictnlp/CRESS train_scripts), epochs shortened
CRESS_FLAGS = ["--criterion", "speech_and_text_translation_with_oracle_reg", "--reg-loss-type", "jsd",
               "--reg-weight", "1.0", "--use-word-level-oracle", "--decay-k", "15", "--use-word-gumbel-noise",
               "--gumbel-temperature", "1.0"]
ADAPTIVE_FLAGS = ["--criterion", "speech_and_text_translation_with_oracle_reg_adaptive", *CRESS_FLAGS[2:],
                  "--adaptive-base", "0.7", "--adaptive-scale", "0.05", "--adaptive-func", "linear_cosine",
                  "--adaptive-weight-drop", "0.0", "--adaptive-st-loss", "--adaptive-mt-loss", "--adaptive-reg-loss"]


def epoch_records(log: str, kind: str = "train") -> dict[int, dict]:
    """The last training record per epoch of a ``--log-format json`` run (``train``: end of epoch; ``train_inner``)."""
    records = {}
    for line in log.splitlines():
        if f"| {kind} |" in line and "{" in line:
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
    valid = [line for line in log1.splitlines() if "| dev |" in line]  # fairseq tags validation by the subset
    assert len(valid) == 2 and all(re.search(r'"dev_st_loss": "?\d', line) for line in valid), log1[-3000:]
    assert not any("dev_reg_loss" in line for line in valid)  # validation: ST only
    saved = load_checkpoint(cress / "checkpoint_last.pt")
    crit_cfg = saved["cfg"]["criterion"]
    name = crit_cfg["_name"] if isinstance(crit_cfg, dict) else crit_cfg.criterion
    assert name == "speech_and_text_translation_with_oracle_reg"

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
    final = load_checkpoint(adaptive / "checkpoint_last.pt")
    assert set(final["model"]) == set(saved["model"])  # no teacher tensors in the student's checkpoint


@pytest.mark.slow
def test_cress_adaptive_fine_tunes_a_quant_transformer(toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    """CRESS + 1-bit fine-tuning: the adaptive criterion on quant_transformer (SVCD decoder), with CTC and KD."""
    log = output(fairseq("train", quant_train_args(
        toy, fp_checkpoint, tmp_path / "q", *ADAPTIVE_FLAGS, "--tgt-lang", TGT, "--quant-targets", "decoder",
        "--max-update", "2", "--ddp-backend", "legacy_ddp", "--ctc-weight", "0.3", "--kd-weight", "0.5",
        "--log-format", "json", "--required-batch-size-multiple", "1", "--max-sentences", "12",
        "--disable-validation")))
    rec = epoch_records(log, "train_inner")[1]
    assert float(rec["gold_prob"]) == pytest.approx(gold(1), abs=1e-4)
    for key in ("st_loss", "mt_loss", "reg_loss", "ctc_loss", "kd_loss"):
        assert math.isfinite(float(rec[key])) and float(rec[key]) >= 0, key
