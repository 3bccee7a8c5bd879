"""Fast checks of the safetensors checkpoint format and of the task-state resources (no fairseq runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from cress_bitnet.checkpoints.safetensors_format import (
    SafetensorsFormatError,
    is_safetensors,
    load_state,
    save_state,
    split_tied,
)
from cress_bitnet.resources import CONFIG_KEY, DICTIONARY_KEY, SPM_KEY, ResourceError, write_resources


def _state() -> dict:
    emb = torch.randn(7, 4)
    base = torch.arange(12, dtype=torch.float32)
    model = {
        "decoder.embed_tokens.weight": emb,
        "decoder.output_projection.weight": emb,  # tied: same tensor
        "a.packed": torch.randint(0, 255, (3, 2), dtype=torch.uint8),
        "a.scale": torch.randn(3).half(),
        "view.first": base[:6],  # two views of one storage: not the same view, so each is copied
        "view.second": base[6:],
        "t.transposed": torch.randn(3, 5).t(),
    }
    args = argparse.Namespace(arch="quant_transformer", quant_record='{"packed": true}', adam_betas=(0.9, 0.98),
                              opaque=object())
    return {"cfg": {"model": args}, "model": model, "optimizer_history": [{"num_updates": 17}],
            "task_state": {DICTIONARY_KEY: "a 1\n", SPM_KEY: torch.tensor([1, 2, 3], dtype=torch.uint8)}}


def test_round_trip_stores_tied_tensors_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    state = _state()
    path = tmp_path / "x.safetensors"
    save_state(state, path)
    assert is_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118
    assert "model.decoder.output_projection.weight" not in keys and "model.decoder.embed_tokens.weight" in keys
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    back = load_state(path)
    assert set(back["model"]) == set(state["model"])
    for k, v in state["model"].items():
        assert back["model"][k].dtype == v.dtype and torch.equal(back["model"][k], v), k
    assert back["model"]["decoder.output_projection.weight"] is back["model"]["decoder.embed_tokens.weight"]
    assert back["args"].arch == "quant_transformer" and back["args"].adam_betas == [0.9, 0.98]
    assert not hasattr(back["args"], "opaque")  # not JSON-able: dropped
    assert back["optimizer_history"][-1]["num_updates"] == 17
    assert back["task_state"][DICTIONARY_KEY] == "a 1\n"
    assert torch.equal(back["task_state"][SPM_KEY], torch.tensor([1, 2, 3], dtype=torch.uint8))


def test_split_tied_only_aliases_identical_views() -> None:
    stored, tied = split_tied(_state()["model"])
    assert tied == {"decoder.output_projection.weight": "decoder.embed_tokens.weight"}
    assert stored["view.first"].untyped_storage().data_ptr() != stored["view.second"].untyped_storage().data_ptr()


def test_not_a_cress_file_is_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(SafetensorsFormatError, match="other.safetensors.*not a cress_bitnet checkpoint"):
        load_state(other)
    pt = tmp_path / "x.pt"
    torch.save({"a": 1}, pt)
    assert not is_safetensors(pt)


def test_write_resources_from_task_state_and_flags(tmp_path: Path) -> None:
    stored = {CONFIG_KEY: json.dumps({"bpe_tokenizer": {"bpe": "sentencepiece"}, "prepend_tgt_lang_tag": False}),
              DICTIONARY_KEY: "x 1\n", SPM_KEY: torch.tensor(list(b"spm!"), dtype=torch.uint8)}
    cfg = write_resources(stored, tmp_path, checkpoint="ck.pt")
    raw = yaml.safe_load(cfg.read_text())
    assert raw["vocab_filename"] == "dict.txt" and raw["bpe_tokenizer"]["sentencepiece_model"] == "spm.model"
    assert (tmp_path / "spm.model").read_bytes() == b"spm!" and (tmp_path / "dict.txt").read_text() == "x 1\n"
    vocab = tmp_path / "v.txt"
    vocab.write_text("y 2\n")
    write_resources(stored, tmp_path, vocab=vocab)
    assert (tmp_path / "dict.txt").read_text() == "y 2\n"  # the flag wins over the checkpoint
    with pytest.raises(ResourceError, match=r"ck.pt stores no data config.*--data-config.*--vocab.*--spm-model"):
        write_resources({}, tmp_path, checkpoint="ck.pt")
    with pytest.raises(ResourceError, match="--spm-model"):
        write_resources({CONFIG_KEY: stored[CONFIG_KEY], DICTIONARY_KEY: "x 1\n"}, tmp_path, checkpoint="ck.pt")
    with pytest.raises(ResourceError, match="--vocab: file not found: nope.txt"):
        write_resources(stored, tmp_path, vocab="nope.txt")
