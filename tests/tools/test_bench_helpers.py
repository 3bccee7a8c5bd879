"""Issue 15: the log parser of bench/fp16_runs.py and the size accounting of bench/real_scale.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.fp16_runs import RunResult, merge, parse_log
from bench.real_scale import subset_manifest, tensor_groups

LOG = """\
2026-12-02 05:41:36 | INFO | train_inner | {"epoch": 1, "loss": "5.4", "loss_scale": "128", "num_updates": "1"}
05:41:37 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 64.0
05:41:38 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 32.0
2026-12-02 05:41:39 | INFO | train_inner | {"epoch": 1, "loss": "5.1", "loss_scale": "32", "num_updates": "2"}
2026-12-02 05:41:40 | INFO | train_inner | {"epoch": 1, "loss": "nan", "loss_scale": "32", "num_updates": "3"}
"""


def test_parse_log_counts_updates_overflows_scales_and_nan() -> None:
    r = parse_log(LOG, RunResult("svcd:constraint", "svcd", "constraint"))
    assert r.updates == 3 and r.overflows == 2 and r.overflow_scales == [64.0, 32.0]
    assert [x["loss_scale"] for x in r.records] == [128.0, 32.0, 32.0]
    assert r.min_loss_scale == 32.0 and r.final_loss_scale == 32.0 and r.nan
    clean = parse_log("\n".join(LOG.splitlines()[:4]), RunResult("bitnet", "bitnet", "-"))
    assert not clean.nan and clean.final_loss == 5.1 and clean.updates == 2


def test_merge_orders_runs_and_keeps_asked_updates(tmp_path: Path) -> None:
    settings = {"updates": 50, "fp16_flag": "--fp16", "cpu": True, "lr": 5e-4, "batch_size": 16, "init_scale": 128,
                "quant_targets": "decoder", "fp_checkpoint": "fp.pt"}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"settings": settings, "runs": [vars(RunResult("bitnet", "bitnet", "-", updates=50))]}))
    b.write_text(json.dumps({"settings": {**settings, "updates": 100},
                             "runs": [vars(RunResult("fp", "none", "-", updates=100))]}))
    merge([str(a), str(b)], tmp_path / "m")
    runs = json.loads((tmp_path / "m" / "fp16_runs.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["fp", "bitnet"] and [r["asked_updates"] for r in runs] == [100, 50]
    assert "| none | - | 100 / 100 |" in (tmp_path / "m" / "fp16_runs.md").read_text()


def test_tensor_groups_counts_a_tied_embedding_once(tmp_path: Path) -> None:
    emb = torch.zeros(10, 4)
    model = {
        "encoder.embed_tokens.weight": emb, "decoder.embed_tokens.weight": emb,
        "decoder.output_projection.weight": emb,
        "decoder.layers.0.fc1.weight": torch.zeros(8, 4), "decoder.layers.0.fc1.bias": torch.zeros(8),
        "decoder.layers.0.final_layer_norm.weight": torch.zeros(4),
        "encoder.hubert_model.mask_emb": torch.zeros(4), "encoder.transformer_layers.0.fc1.weight": torch.zeros(3, 4),
    }
    torch.save({"model": model}, tmp_path / "m.pt")
    g = tensor_groups(tmp_path / "m.pt", ["decoder.layers.0.fc1"])
    assert g["shared_embedding"] == 160 and g["decoder_quantized_linears"] == 4 * (32 + 8)
    assert g["decoder_other"] == 16 and g["hubert"] == 16 and g["encoder_text"] == 48
    assert g["whole_model"] == 160 + 160 + 16 + 16 + 48 and g["whole_decoder"] == 160 + 160 + 16


def test_subset_manifest_takes_the_first_utterances_and_their_audio_seconds(tmp_path: Path) -> None:
    rows = ["id\taudio\tn_frames\ttgt_text"] + [f"u{i}\tx.wav:0:{16000 * (i + 1)}\t{16000 * (i + 1)}\tt" for i in
                                                range(5)]
    (tmp_path / "tst-COMMON.tsv").write_text("\n".join(rows) + "\n")
    split, seconds = subset_manifest(tmp_path, 3)
    assert split == "bench3" and seconds == 6.0
    assert (tmp_path / "bench3.tsv").read_text().splitlines() == rows[:4]
