"""Issue 6: the CPU demo (scripts/demo.sh) at a tiny size: every stage runs, results.json has the promised structure,
curves.png is a PNG, a rerun skips the finished stages, and a failing stage names itself and its log."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
from conftest import run_demo

pytestmark = pytest.mark.slow  # every test here runs the tiny demo (fairseq-train / fairseq-generate)

STAGES = ["corpus", "hubert", "mt", "fp", "svcd_cross_attn", "svcd_decoder", "generate_fp",
          "generate_svcd_cross_attn", "generate_svcd_decoder", "results", "curves"]

def test_demo_runs_every_stage_and_writes_results(tiny_demo: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = tiny_demo
    for i, stage in enumerate(STAGES, 1):
        assert f"== [{i}/{len(STAGES)}] {stage}: " in proc.stdout, f"no heading for stage {stage}"
        assert (out / "logs" / f"{stage}.log").is_file()
        assert (out / "stamps" / f"{stage}.done").is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"systems", "total_seconds"}
    assert isinstance(results["total_seconds"], float) and results["total_seconds"] > 0
    systems = {s["name"]: s for s in results["systems"]}
    assert [s["name"] for s in results["systems"]] == ["fp", "svcd_cross_attn", "svcd_decoder"]
    for s in results["systems"]:
        assert set(s) == {"name", "bleu", "quantized_modules", "decoder_linear_bytes", "train_seconds"}
        assert isinstance(s["bleu"], float) and math.isfinite(s["bleu"]) and 0.0 <= s["bleu"] <= 100.0
        assert isinstance(s["decoder_linear_bytes"], int) and s["decoder_linear_bytes"] > 0
        assert isinstance(s["train_seconds"], float) and s["train_seconds"] > 0
    assert systems["fp"]["quantized_modules"] == []
    cross = systems["svcd_cross_attn"]["quantized_modules"]
    dec = systems["svcd_decoder"]["quantized_modules"]
    assert cross and all(".encoder_attn." in name for name in cross), cross
    assert dec and set(cross) < set(dec) and all(name.startswith("decoder.") for name in dec), dec
    assert not any("output_projection" in name for name in dec)
    fp_bytes = systems["fp"]["decoder_linear_bytes"]
    assert systems["svcd_decoder"]["decoder_linear_bytes"] < systems["svcd_cross_attn"]["decoder_linear_bytes"] \
        < fp_bytes
    # the printed table and results.md agree with the json
    table = (out / "results.md").read_text()
    for s in results["systems"]:
        assert re.search(rf"^\| {s['name']} \| {s['bleu']:.2f} \|", table, flags=re.M)
    assert "svcd_decoder" in proc.stdout.split("== results")[-1]
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rerun_skips_finished_stages(tiny_demo: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = tiny_demo
    before = (out / "results.json").read_text()
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, stage in enumerate(STAGES, 1):
        assert re.search(rf"== \[{i}/{len(STAGES)}\] {stage}: skip \(done earlier in [\d.]+ s", proc.stdout), stage
    assert (out / "results.json").read_text() == before


def test_failing_stage_names_itself_and_its_log(tiny_demo: tuple[Path, subprocess.CompletedProcess],
                                                tmp_path: Path) -> None:
    out, _ = tiny_demo
    # A stage that cannot work: the curves of a run whose tensorboard folder is gone. Earlier stages are skipped.
    (out / "stamps" / "curves.done").unlink()
    tb = out / "runs" / "svcd_decoder" / "tensorboard"
    tb.rename(tmp_path / "tb")
    try:
        proc = run_demo(out)
    finally:
        (tmp_path / "tb").rename(tb)
    assert proc.returncode == 1
    assert f"error: demo stage 'curves' failed (exit 2); full log: {out}/logs/curves.log" in proc.stderr
    assert "tensorboard log dir not found" in (out / "logs" / "curves.log").read_text()
    assert not (out / "stamps" / "curves.done").exists()
