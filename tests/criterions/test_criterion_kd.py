"""Knowledge distillation as the criterion's concern (--kd-weight, --kd-teacher): the loss against a hand-computed
KL(teacher || student) on a padded batch at two weights, and the frozen teacher kept out of everything trained."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fake_st_model import PAD, FakeSTModel, fake_task, padded_batch

import cress_bitnet  # noqa: F401  (registers the criteria)
from cress_bitnet.checkpoints import CheckpointError
from cress_bitnet.criterions import speech_and_text_translation as base
from cress_bitnet.criterions.speech_and_text_translation import SpeechAndTextTranslationCriterion


@pytest.fixture
def teacher_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A teacher checkpoint path; build_fp_model is replaced by a FakeSTModel (seed 1) and records its calls."""
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"stand-in")
    calls: dict = {"path": str(path), "built": []}

    def build(p: str, task: object, *, flag: str, overrides: object = None) -> tuple:
        calls["built"].append((p, flag))
        return FakeSTModel(seed=1), None

    monkeypatch.setattr(base, "build_fp_model", build)
    return calls


def criterion(weight: float, teacher: str | None = None, **task_args: object) -> SpeechAndTextTranslationCriterion:
    return SpeechAndTextTranslationCriterion(fake_task(**task_args), False, 0.0, kd_weight=weight, kd_teacher=teacher)


def hand_kl(teacher: FakeSTModel, student: FakeSTModel, sample: dict) -> float:
    """sum over non-pad target positions of sum_v p_t(v) * (log p_t(v) - log p_s(v)), written out in loops."""
    with torch.no_grad():
        t = torch.softmax(teacher(**sample["net_input"])[0].double(), -1)
        s = torch.softmax(student(**sample["net_input"])[0].double(), -1)
    total = 0.0
    for b in range(t.size(0)):
        for i in range(t.size(1)):
            if sample["target"][b, i] == PAD:
                continue
            total += sum(float(t[b, i, v]) * (math.log(t[b, i, v]) - math.log(s[b, i, v])) for v in range(t.size(2)))
    return total


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_kd_term_is_weighted_kl_teacher_to_student_without_padding(weight: float, teacher_file: dict) -> None:
    student, sample = FakeSTModel(seed=0), padded_batch()
    expected_kl = hand_kl(FakeSTModel(seed=1), student, sample)
    assert sample["target"].eq(PAD).sum() == 3  # the batch really is padded

    plain = criterion(0.0)
    ce, _, _ = plain(student, sample)
    loss, _, log = criterion(weight, teacher_file["path"])(student, sample)
    assert log["kd_loss"].item() == pytest.approx(expected_kl, rel=1e-5)
    assert loss.item() == pytest.approx(ce.item() + weight * expected_kl, rel=1e-5)
    assert teacher_file["built"] == [(teacher_file["path"], "--kd-teacher")]


def test_kd_is_off_by_default_and_not_in_validation(teacher_file: dict) -> None:
    student, sample = FakeSTModel(seed=0), padded_batch()
    _, _, log = criterion(0.0)(student, sample)
    assert "kd_loss" not in log
    crit = criterion(1.0, teacher_file["path"])
    crit.eval()
    _, _, log = crit(student, sample)
    assert "kd_loss" not in log and not teacher_file["built"]


def test_teacher_is_frozen_outside_every_trained_thing(teacher_file: dict) -> None:
    student, sample = FakeSTModel(seed=0).double(), padded_batch()
    crit = criterion(1.0, teacher_file["path"])
    loss, _, _ = crit(student, sample)
    teacher = crit.teacher(next(student.parameters()))
    assert teacher_file["built"] == [(teacher_file["path"], "--kd-teacher")]  # built once, lazily
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.float64 for p in teacher.parameters())  # follows the student's dtype
    assert list(crit.parameters()) == [] and crit.state_dict() == {}
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.decoder.proj.weight.grad.abs().sum() > 0
    torch.optim.SGD(student.parameters(), lr=0.5).step()
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())
    crit.train()  # the trainer's train() does not reach the teacher either
    assert not crit.teacher(next(student.parameters())).training


def test_teacher_defaults_to_the_runs_pretrained_st_checkpoint(teacher_file: dict) -> None:
    crit = criterion(1.0, None, pretrained_st_checkpoint=teacher_file["path"])
    crit(FakeSTModel(seed=0), padded_batch())
    assert teacher_file["built"] == [(teacher_file["path"], "--kd-teacher")]


def test_kd_flag_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--kd-weight 1.0 needs a teacher: pass --kd-teacher"):
        criterion(1.0)
    with pytest.raises(CheckpointError, match=r"KD teacher not found: .*gone.pt \(given by --kd-teacher\)"):
        criterion(1.0, str(tmp_path / "gone.pt"))
    with pytest.raises(CheckpointError, match=r"given by --pretrained-st-checkpoint"):
        criterion(1.0, None, pretrained_st_checkpoint=str(tmp_path / "gone.pt"))
    with pytest.raises(ValueError, match="--kd-weight must be >= 0"):
        criterion(-1.0)


def test_teacher_without_weight_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        crit = criterion(0.0, "teacher.pt")
    assert crit.kd_teacher_path is None
    assert "--kd-teacher teacher.pt is unused: distillation is off without --kd-weight > 0" in caplog.text
