"""scripts/average_checkpoints.py by values: the mean of known tensors, which files are picked, fairseq's
``--num-epoch-checkpoints`` / ``--num-update-checkpoints`` spellings, and the errors that name the bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from scripts.average_checkpoints import main


def _save(path: Path, scale: float, step: int, *, extra: str = "") -> None:
    """A fairseq-like checkpoint whose float tensors are ``scale`` times a fixed pattern."""
    pattern = torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2.5
    model = {
        "w": pattern * scale,
        "half": (pattern * scale).to(torch.float16),
        "num_batches": torch.tensor(step, dtype=torch.long),
    }
    torch.save({"model": model, "cfg": {"tag": extra or path.name}, "extra_state": {"step": step}}, path)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Epoch checkpoints 1..4 with scales 1, 2, 4, 8 and update checkpoints of epoch 4 with scales 10, 30, 50."""
    d = tmp_path / "run"
    d.mkdir()
    for epoch, scale in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        _save(d / f"checkpoint{epoch}.pt", scale, epoch)
    for upd, scale in ((100, 10.0), (200, 30.0), (300, 50.0)):
        _save(d / f"checkpoint_4_{upd}.pt", scale, upd)
    _save(d / "checkpoint_last.pt", 99.0, 999)
    return d


PATTERN = torch.arange(6, dtype=torch.float64).reshape(2, 3) - 2.5


@pytest.mark.parametrize(
    ("argv", "mean_scale", "newest"),
    [
        (["--num", "3"], (2 + 4 + 8) / 3, "checkpoint4.pt"),  # auto: epoch checkpoints, the newest three
        (["--num", "2", "--kind", "epoch"], (4 + 8) / 2, "checkpoint4.pt"),
        (["--num-epoch-checkpoints", "4"], (1 + 2 + 4 + 8) / 4, "checkpoint4.pt"),
        (["--num-update-checkpoints", "2"], (30 + 50) / 2, "checkpoint_4_300.pt"),
        (["--num", "2", "--kind", "update"], (30 + 50) / 2, "checkpoint_4_300.pt"),
        (["--num-epoch-checkpoints", "1"], 8.0, "checkpoint4.pt"),
    ],
)
def test_average_is_the_mean_of_the_newest_tensors(run_dir: Path, argv: list[str], mean_scale: float,
                                                   newest: str) -> None:
    out = run_dir / "avg.pt"
    assert main(["--inputs", str(run_dir), *argv, "--output", str(out)]) == 0
    avg = _load(out)
    ref = _load(run_dir / newest)
    torch.testing.assert_close(avg["model"]["w"], (PATTERN * mean_scale).float(), rtol=0, atol=1e-6)
    assert avg["model"]["half"].dtype == torch.float16
    torch.testing.assert_close(avg["model"]["half"], (PATTERN * mean_scale).half(), rtol=1e-3, atol=1e-3)
    # integer buffers and everything outside "model" come from the newest checkpoint, not averaged
    assert avg["model"]["num_batches"].dtype == torch.long
    assert int(avg["model"]["num_batches"]) == int(ref["model"]["num_batches"])
    assert avg["cfg"] == ref["cfg"] and avg["extra_state"] == ref["extra_state"]


def test_fewer_checkpoints_than_asked_averages_all_with_a_warning(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _save(tmp_path / "checkpoint1.pt", 3.0, 1)
    _save(tmp_path / "checkpoint2.pt", 5.0, 2)
    assert main(["--inputs", str(tmp_path), "--num-epoch-checkpoints", "10", "--output", str(tmp_path / "a.pt")]) == 0
    torch.testing.assert_close(_load(tmp_path / "a.pt")["model"]["w"], (PATTERN * 4.0).float())
    assert "only 2 checkpoint(s)" in capsys.readouterr().err


def test_only_checkpoint_last_is_copied(tmp_path: Path) -> None:
    _save(tmp_path / "checkpoint_last.pt", 7.0, 7)
    assert main(["--inputs", str(tmp_path), "--output", str(tmp_path / "a.pt")]) == 0
    torch.testing.assert_close(_load(tmp_path / "a.pt")["model"]["w"], (PATTERN * 7.0).float())


def test_mismatched_checkpoints_name_the_file(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = run_dir / "checkpoint3.pt"
    state = _load(bad)
    state["model"]["w"] = torch.zeros(3, 2)
    torch.save(state, bad)
    assert main(["--inputs", str(run_dir), "--num", "2", "--output", str(run_dir / "a.pt")]) == 2
    assert f"{bad}: w has shape (3, 2), expected (2, 3)" in capsys.readouterr().err
    assert not (run_dir / "a.pt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-epoch-checkpoints", "2", "--kind", "update"],
         "--num-epoch-checkpoints averages epoch checkpoints; it contradicts --kind update"),
        (["--num-epoch-checkpoints", "0"], "--num-epoch-checkpoints must be >= 1"),
        (["--num", "2", "--num-epoch-checkpoints", "2"], "not allowed with argument"),
    ],
)
def test_contradicting_flags_are_rejected(run_dir: Path, argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--inputs", str(run_dir), *argv, "--output", str(run_dir / "a.pt")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_runs_as_a_module_with_cress_spelling(run_dir: Path) -> None:
    """CRESS's avg_epoch.sh line, with only the script path changed to the module."""
    proc = subprocess.run([sys.executable, "-m", "scripts.average_checkpoints", "--inputs", str(run_dir),
                           "--num-epoch-checkpoints", "2", "--output", str(run_dir / "avg_last_2_epoch.pt")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "averaged 2 checkpoint(s) (checkpoint4.pt, checkpoint3.pt)" in proc.stdout
    torch.testing.assert_close(_load(run_dir / "avg_last_2_epoch.pt")["model"]["w"], (PATTERN * 6.0).float())
