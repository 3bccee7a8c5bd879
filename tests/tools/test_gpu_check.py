"""Issue 15 item 5: bench/gpu_check.sh skips cleanly without a GPU, and its dry run lists well-formed commands."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a GPU machine
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_skips_with_exit_0_and_one_clear_line_without_a_gpu(tmp_path) -> None:  # noqa: ANN001
    proc = _run("--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "gpu_check: SKIPPED - no CUDA device visible to torch (nothing run, exit 0)"]
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_every_step_and_its_modules_import(tmp_path) -> None:  # noqa: ANN001
    proc = _run("--dry-run", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {ln.split(":", 1)[0]: ln for ln in proc.stdout.splitlines() if ":" in ln}
    for step in ("tests", "corpus", "prep", "tiny", "fp", "fp16", "layers", "infer", "real"):
        assert step in lines, proc.stdout
    assert "-m cuda" in lines["tests"]
    assert "--fp16" in lines["fp"] and "--device cuda" in lines["fp16"] and "--updates 200" in lines["fp16"]
    assert "--quick --device cuda" in lines["real"]
    assert "gpu_check: dry run ok - every module imports" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_unknown_argument_is_an_error() -> None:
    proc = _run("--bogus")
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
