"""bench/bench_inference.py --e2e: fairseq-generate arguments derived from the checkpoint and the data folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, ToyData, output, run_tool

from bench import bench_inference


def test_derived_generate_args_come_from_checkpoint_and_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev", "tst-HE", "tst-COMMON"):
        (data / f"{split}.tsv").write_text("id\n")
    (data / "config_st.yaml").write_text("vocab_filename: x\n")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"cfg": {"task": {"_name": "speech_and_text_translation", "config_yaml": "config_st.yaml"}}}, ckpt)
    args = bench_inference.derived_generate_args(data, ckpt)
    assert args == ["--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
                    "--gen-subset", "tst-COMMON", "--config-yaml", "config_st.yaml"]
    (data / "tst-COMMON.tsv").unlink()
    assert bench_inference.gen_subset(data) == "tst-HE"
    for split in ("tst-HE", "dev"):
        (data / f"{split}.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"data: no test manifest.*--gen-subset"):
        bench_inference.gen_subset(data)
    torch.save({"cfg": {"model": {}}}, ckpt)
    with pytest.raises(ValueError, match=r"ckpt.pt: no task recorded"):
        bench_inference.derived_generate_args(data, ckpt)


@pytest.mark.slow
def test_e2e_runs_as_documented(toy: ToyData, fp_checkpoint: Path, svcd_decoder_checkpoint: Path,
                                tmp_path: Path) -> None:
    packed = tmp_path / "packed.pt"
    run_tool([sys.executable, "-m", "cress_bitnet.export", str(svcd_decoder_checkpoint), str(packed)])
    out = tmp_path / "e2e.json"
    log = output(run_tool([sys.executable, "-m", "bench.bench_inference", "--no-kernels", "--json", str(out),
                           "--e2e-repeats", "2",
                           "--e2e", str(toy.st_dir), str(fp_checkpoint), str(packed), str(svcd_decoder_checkpoint)],
                          timeout=1800))
    e2e = json.loads(out.read_text())["e2e"]
    assert set(e2e) == {"batch 1", "batched"}, log
    for run in e2e.values():
        for which in ("fp", "packed", "unpacked"):  # the toy tst-COMMON split, 6 sentences
            assert run[which]["sentences"] == 6 and run[which]["generate_s"] > 0 and run[which]["tokens"] > 0
            assert run[which]["tokens_per_s"] == pytest.approx(run[which]["tokens"] / run[which]["generate_s"])
            assert run[which]["encoder_s"] > 0 and run[which]["decoder_s"] > 0 and run[which]["decoder_steps"] > 0
            assert run[which]["decoder_ms_per_step"] == pytest.approx(
                1e3 * run[which]["decoder_s"] / run[which]["decoder_steps"])  # steps are the same in both runs
            for key in ("generate_s", "wall_s", "decoder_s"):  # two runs each, the reported time their median
                assert len(run[which][f"{key}_all"]) == 2
                assert run[which][key] == pytest.approx(sum(run[which][f"{key}_all"]) / 2)
        assert run["compared"] == "generate_s" and run["repeats"] == 2
        assert run["speedup"] > 0 and run["unpacked_speedup"] > 0
    assert "| batch 1 | unpacked | 6 |" in log and "| batched | packed | 6 |" in log and "decoder ms/step" in log


def test_repeated_e2e_runs_report_medians_and_must_agree() -> None:
    times = ((3.0, 1.0), (9.0, 4.0), (4.0, 2.0))
    runs = [{"sentences": 6, "tokens": 40, "wall_s": w, "generate_s": g} for w, g in times]
    med = bench_inference._median_run(runs, "batch 1, fp")
    assert (med["wall_s"], med["generate_s"], med["tokens_per_s"]) == (4.0, 2.0, 20.0)
    assert med["generate_s_all"] == [1.0, 4.0, 2.0] and med["tokens"] == 40
    runs[1]["tokens"] = 41  # a nondeterministic decode would make the medians meaningless
    with pytest.raises(RuntimeError, match=r"batch 1, fp: the repeated runs decoded different outputs"):
        bench_inference._median_run(runs, "batch 1, fp")


def test_generate_stats_reads_the_log_and_the_timers(tmp_path: Path) -> None:
    from bench.timed_generate import generate_stats

    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"encoder_s": 0.5, "decoder_s": 2.0, "decoder_calls": 400, "decoder_rows": 2000,
                                 "output_layer_s": 0.5, "output_layer_calls": 400, "encoder_calls": 6}))
    log = "INFO:fairseq_cli.generate:Translated 1,200 sentences (3,234 tokens) in 8.0s (150.0 sentences/s, ...)"
    g = generate_stats(log, stats, "gen.log")
    assert (g["sentences"], g["tokens"], g["generate_s"], g["decoder_steps"]) == (1200, 3234, 8.0, 400)
    assert g["decoder_ms_per_step"] == 5.0 and g["output_projection_ms_per_step"] == 1.25
    assert g["rows_per_step"] == 5.0 and g["tokens_per_s"] == pytest.approx(3234 / 8.0)
    with pytest.raises(RuntimeError, match="no 'Translated ...' line in gen.log"):
        generate_stats("generation failed", stats, "gen.log")
