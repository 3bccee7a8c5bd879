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
                           "--e2e", str(toy.st_dir), str(fp_checkpoint), str(packed), str(svcd_decoder_checkpoint)],
                          timeout=1800))
    e2e = json.loads(out.read_text())["e2e"]
    assert set(e2e) == {"batch 1", "batched"}, log
    for run in e2e.values():
        for which in ("fp", "packed", "unpacked"):  # the toy tst-COMMON split, 6 sentences
            assert run[which]["sentences"] == 6 and run[which]["generate_s"] > 0 and run[which]["tokens"] > 0
            assert run[which]["tokens_per_s"] == pytest.approx(run[which]["tokens"] / run[which]["generate_s"])
        assert run["compared"] == "generate_s" and run["speedup"] > 0 and run["unpacked_speedup"] > 0
    assert "| batch 1 | unpacked | 6 |" in log and "| batched | packed | 6 |" in log
