"""Issue 15 item 1: real-size HuBERT Base and DeltaLM-base files in the release formats load with the project's
loaders and run a forward pass (random weights; built once per session by the ``base_ckpts`` fixture)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from conftest import REPO, TGT, ToyData
from fairseq import options, tasks
from fairseq.data import Dictionary

import cress_bitnet  # noqa: F401
from cress_bitnet.checkpoints import load_checkpoint
from cress_bitnet.models.hubert_loader import PRETRAINING_ONLY_PREFIXES, load_hubert
from data_prep.make_base_checkpoints import (
    DELTALM_DICT_SIZE,
    DELTALM_EMBED_ROWS,
    DELTALM_FILE,
    DICT_FILE,
    HUBERT_FILE,
    SPM_FILE,
    SPM_PIECES,
)
from data_prep.make_tiny_checkpoints import deltalm_keys

pytestmark = pytest.mark.slow


def test_hubert_base_file_is_the_release_layout(base_ckpts: Path) -> None:
    state = load_checkpoint(base_ckpts / HUBERT_FILE, what="HuBERT checkpoint", flag="--hubert-model-path")
    assert isinstance(state["args"], argparse.Namespace)
    assert state["args"].task == "hubert_pretraining" and state["args"].labels == "['layer6.km500']"
    assert state["args"].encoder_layers == 12 and state["args"].encoder_embed_dim == 768
    dicts = state["task_state"]["dictionaries"]
    assert isinstance(dicts[0], Dictionary) and len(dicts[0]) == 504
    model = state["model"]
    assert len(model) == 214 and sum(t.numel() for t in model.values()) == 94_697_600
    assert model["encoder.pos_conv.0.weight_v"].shape == (768, 48, 128)
    assert model["label_embs_concat"].shape == (504, 256)
    assert model["feature_extractor.conv_layers.0.0.weight"].shape == (512, 1, 10)
    assert "optimizer_history" in state and "extra_state" in state


def test_hubert_base_loads_every_tensor_and_runs(base_ckpts: Path) -> None:
    path = base_ckpts / HUBERT_FILE
    model, cfg = load_hubert(path, dropout=0.0, encoder_layerdrop=0.0)
    assert cfg["model"]["encoder_layers"] == 12 and cfg["task"]["normalize"] is False
    source = torch.load(path, map_location="cpu", weights_only=True)["model"]
    mine = model.state_dict()
    expected = {k for k in source if not k.startswith(PRETRAINING_ONLY_PREFIXES)}
    assert set(mine) - {"label_embs_concat"} == expected
    assert all(torch.equal(mine[k], source[k]) for k in expected)
    model.eval()
    wave = torch.randn(2, 8000)
    pad = torch.zeros(2, 8000, dtype=torch.bool)
    pad[1, 6000:] = True
    with torch.no_grad():
        x, out_pad = model.extract_features(wave, padding_mask=pad, mask=False)
    assert x.shape == (2, 24, 768) and torch.isfinite(x).all()
    # fairseq downsamples the mask by blocks of 8000 // 24 = 333 -> 332 samples (all-pad blocks are pad): 19 frames
    assert out_pad.shape == (2, 24) and int((~out_pad[1]).sum()) == 19 and not out_pad[0].any()


def test_deltalm_base_file_dict_and_spm_match(base_ckpts: Path) -> None:
    weights = torch.load(base_ckpts / DELTALM_FILE, map_location="cpu", weights_only=True)
    assert list(weights) == ["weights"]
    w = weights["weights"]
    assert list(w) == deltalm_keys(12, 6) and len(w) == 392
    assert w["src_embedding.embed_tokens.weight"].shape == (DELTALM_EMBED_ROWS, 768)
    assert w["tgt_embedding.embed_positions.weight"].shape == (514, 768)
    assert w["decoder.layers.5.ffn_1.fc1.weight"].shape == (3072, 768)
    assert w["encoder.layers.11.ffn.fc2.weight"].shape == (768, 3072)
    d = Dictionary.load(str(base_ckpts / DICT_FILE))
    assert len(d) == DELTALM_DICT_SIZE
    sp = spm.SentencePieceProcessor(model_file=str(base_ckpts / SPM_FILE))
    assert sp.get_piece_size() == SPM_PIECES
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # fairseq's XLM-R/DeltaLM convention: spm id i is dictionary index i + 1 for every real piece.
    assert all(d.index(sp.id_to_piece(i)) == i + 1 for i in range(3, SPM_PIECES, 101))
    pieces = sp.encode("Die Katze ist klein.", out_type=str)
    assert pieces and all(d.index(p) != d.unk() for p in pieces)


def _build_st(toy: ToyData, base: Path):  # noqa: ANN202
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(toy.st_dir), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", "config_deltalm.yaml", "--tgt-lang", TGT, "--st-training", "--arch", "hubert_deltalm_base",
        "--hubert-model-path", str(base / HUBERT_FILE), "--conv-kernel-sizes", "",
        "--load-pretrained-mt-encoder-decoder-from", str(base / DELTALM_FILE),
        "--criterion", "speech_and_text_translation", "--max-tokens", "400000",
    ])
    task = tasks.setup_task(args)
    return task, task.build_model(args)


def test_hubert_deltalm_base_builds_from_both_files_and_runs(toy: ToyData, base_ckpts: Path) -> None:
    task, model = _build_st(toy, base_ckpts)
    assert len(task.target_dictionary) == DELTALM_DICT_SIZE
    report = model.mt_load_report
    assert report.fmt == "deltalm" and not report.unexpected
    assert not [k for k in report.missing if "output_projection" not in k], report.summary()
    weights = torch.load(base_ckpts / DELTALM_FILE, map_location="cpu", weights_only=True)["weights"]
    mine = model.state_dict()
    assert len(report.loaded) + len(report.superseded) == len(weights)
    for key, source in report.loaded.items():
        src = weights[source]
        assert torch.equal(mine[key], src[: mine[key].shape[0]] if key.endswith("embed_tokens.weight") else src), key
    # the shared embedding is the decoder's (tgt) copy, sliced to the dictionary; the output projection is tied to it
    emb = mine["decoder.embed_tokens.weight"]
    assert emb.shape == (DELTALM_DICT_SIZE, 768)
    assert torch.equal(emb, weights["tgt_embedding.embed_tokens.weight"][:DELTALM_DICT_SIZE])
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight
    task.load_dataset("dev")
    ds = task.dataset("dev")
    sample = ds.collater([ds[i] for i in range(2)])
    model.eval()
    with torch.no_grad():
        logits, _ = model(**sample["net_input"])
    assert logits.shape[0] == 2 and logits.shape[-1] == DELTALM_DICT_SIZE and torch.isfinite(logits).all()
    assert int(sample["target"].ne(task.target_dictionary.unk()).all())  # DeltaLM's spm covers the toy text
