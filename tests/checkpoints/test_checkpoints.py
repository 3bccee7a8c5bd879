"""The checkpoints package: the format registry, saved model args, safe loading that the environment cannot turn off,
and the crash-safe copy of ``checkpoint_last.pt`` (issue 12 item 5, issue 14 items 6 and 8)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ToyData
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

import cress_bitnet  # noqa: F401  (installs the fairseq patches)
from cress_bitnet.checkpoints import (
    UNSAFE_ENV,
    CheckpointError,
    CheckpointFormat,
    detect_format,
    find_format,
    load_checkpoint,
    register_format,
    registered_formats,
    saved_model_args,
    unregister_format,
    upgrade_to_native,
)
from data_prep.make_tiny_checkpoints import make_deltalm, make_hubert_cfg_format, make_hubert_legacy

# ---------------------------------------------------------------- saved model args


def test_saved_model_args_reads_both_layouts_and_writes_through() -> None:
    legacy = argparse.Namespace(arch="transformer", encoder_layers=2)
    assert saved_model_args({"args": legacy, "model": {}}) is legacy
    trainer = argparse.Namespace(arch="hubert_transformer")
    state = {"args": None, "cfg": {"model": trainer, "task": {}}}
    assert saved_model_args(state) is trainer  # the stored object: an upgrade may rewrite it in memory
    saved_model_args(state).hubert_model_path = "/x"
    assert state["cfg"]["model"].hubert_model_path == "/x"
    dataclass_model = saved_model_args({"args": None, "cfg": {"model": {"_name": "hubert", "final_dim": 16}}})
    assert vars(dataclass_model) == {"_name": "hubert", "final_dim": 16}
    assert saved_model_args({"model": {}}) is None and saved_model_args({"args": None, "cfg": None}) is None


# ---------------------------------------------------------------- the registry


@pytest.fixture
def toy_format() -> Iterator[CheckpointFormat]:
    """A format registered from outside the package, as the quantization side registers its old quant-args format."""
    fmt = register_format(CheckpointFormat(
        "toy_speech", "a toy speech-translation checkpoint", frozenset({"st"}),
        detect=lambda state: isinstance(state.get("toy_marker"), int),
        arch=lambda state: f"toy_v{state['toy_marker']}",
        map_keys=lambda keys: ({k.replace("old.", "new."): k for k in keys if k != "junk"}, {"junk": "not needed"}),
        upgrade=lambda state, report: __import__("cress_bitnet.checkpoints", fromlist=["x"]).rewrite_weights(
            state, report.format, report),
        priority=100,
    ))
    yield fmt
    unregister_format("toy_speech")


def test_a_new_format_is_one_registry_entry(toy_format: CheckpointFormat, tmp_path: Path) -> None:
    state = {"toy_marker": 2, "model": {"old.w": torch.ones(2), "junk": torch.zeros(1)}}
    assert find_format(state) is toy_format and registered_formats()[0] is toy_format
    assert toy_format.implied_arch(state) == "toy_v2"
    report = upgrade_to_native(state, tmp_path / "toy.pt")
    assert list(state["model"]) == ["new.w"] and report.dropped == {"junk": "not needed"}
    assert report.renamed == {"old.w": "new.w"}
    with pytest.raises(CheckpointError, match=r"toy\.pt: is a toy speech-translation checkpoint \(arch toy_v2\), not "
                                              r"a HuBERT checkpoint as --hubert-model-path needs; pass it to "
                                              r"fairseq-generate --path"):
        detect_format(state, tmp_path / "toy.pt", role="hubert", flag="--hubert-model-path")
    with pytest.raises(ValueError, match="already registered"):
        register_format(toy_format)
    with pytest.raises(ValueError, match="roles"):
        CheckpointFormat("bad", "bad", frozenset({"vocoder"}), detect=lambda s: False)


def test_unknown_files_are_named_and_left_alone(tmp_path: Path) -> None:
    state = {"args": None, "cfg": {"model": {"_name": "wav2vec2"}}, "model": {"w": torch.zeros(1)}}
    assert find_format(state) is None and upgrade_to_native(state, tmp_path / "w2v.pt") is None
    with pytest.raises(CheckpointError, match=r"w2v\.pt: is a 'wav2vec2' checkpoint of no format this plugin knows"):
        detect_format(state, tmp_path / "w2v.pt", role="st")


def _quant_state(fp: Path, packed: bool) -> dict:
    state = load_checkpoint(fp)
    state["cfg"]["model"].quant_record = json.dumps({"version": 1, "packed": packed, "modules": {}})
    return state


@pytest.mark.parametrize("case", ["hubert_legacy", "hubert_cfg", "deltalm", "fairseq_transformer",
                                  "hubert_transformer", "cress_bitnet_quant", "cress_bitnet_packed"])
def test_builtin_formats_are_recognised(case: str, toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    if case == "hubert_legacy":
        make_hubert_legacy(path)
    elif case == "hubert_cfg":
        make_hubert_cfg_format(path)
    elif case == "deltalm":
        make_deltalm(path)
    if path.exists():
        state = load_checkpoint(path)
    elif case == "fairseq_transformer":
        state = load_checkpoint(toy.mt_checkpoint)
    elif case == "hubert_transformer":
        state = load_checkpoint(fp_checkpoint)
    else:
        state = _quant_state(fp_checkpoint, packed=case.endswith("packed"))
    fmt = find_format(state)
    assert fmt is not None and fmt.name == case
    expected_arch = {"hubert_legacy": "hubert", "hubert_cfg": "hubert", "deltalm": "deltalm",
                     "fairseq_transformer": "transformer", "hubert_transformer": "hubert_transformer_postln"}
    assert fmt.implied_arch(state) == expected_arch.get(case, "quant_transformer")


def test_mt_key_maps(toy: ToyData, tmp_path: Path) -> None:
    mt = find_format(load_checkpoint(toy.mt_checkpoint))
    renames, dropped = mt.map_keys(["encoder.layers.0.fc1.weight", "decoder.layers.0.fc1.weight", "decoder.version"])
    assert renames == {"encoder.transformer_layers.0.fc1.weight": "encoder.layers.0.fc1.weight",
                       "decoder.layers.0.fc1.weight": "decoder.layers.0.fc1.weight"}
    assert set(dropped) == {"decoder.version"}
    make_deltalm(tmp_path / "d.pt")
    deltalm = find_format(load_checkpoint(tmp_path / "d.pt"))
    renames, _ = deltalm.map_keys(["src_embedding.emb_layer_norm.weight", "encoder.layers.0.ffn_1.fc1.weight",
                                   "decoder.layers.1.ffn_2.fc2.bias"])
    assert renames == {"encoder.layernorm_embedding.weight": "src_embedding.emb_layer_norm.weight",
                       "encoder.transformer_layers.0.fc3.weight": "encoder.layers.0.ffn_1.fc1.weight",
                       "decoder.layers.1.fc2.bias": "decoder.layers.1.ffn_2.fc2.bias"}


# ---------------------------------------------------------------- issue 14 item 6: no unsafe load by environment


def _trainer_state_with(payload: object) -> dict:
    """Enough of a trainer checkpoint for fairseq's loader, plus one harmless global outside the allowlist."""
    return {"args": None, "cfg": None, "model": {"w": torch.zeros(2)}, "extra_state": {"train_iterator": {}},
            "optimizer_history": [{"criterion_name": "c", "optimizer_name": "o", "lr_scheduler_state": {},
                                   "num_updates": 0}], "last_optimizer_state": None, "payload": payload}


def test_unsafe_environment_is_refused_by_both_loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dated.pt"
    torch.save(_trainer_state_with(datetime.date(2024, 4, 7)), path)
    with pytest.raises(CheckpointError, match=r"dated\.pt.*global 'datetime\.date'"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))  # refused by the allowlist, env var unset
    monkeypatch.setenv(UNSAFE_ENV, "1")
    # with the variable, torch would unpickle the date (and any code) for fairseq, which passes no weights_only
    assert torch.load(path, map_location="cpu")["payload"] == datetime.date(2024, 4, 7)
    for load in (checkpoint_utils.load_checkpoint_to_cpu, load_checkpoint):
        with pytest.raises(CheckpointError, match=rf"dated\.pt: refusing to load .*while {UNSAFE_ENV}=1 is set"):
            load(str(path))
    monkeypatch.setenv(UNSAFE_ENV, "0")  # torch's own spelling of "off" is not refused
    with pytest.raises(CheckpointError, match="global 'datetime.date'"):
        load_checkpoint(path)


@pytest.mark.slow
def test_unsafe_environment_is_refused_in_fairseq_generate(tmp_path: Path, toy: ToyData) -> None:
    from conftest import fairseq, generate_args, output

    path = tmp_path / "dated.pt"
    torch.save(_trainer_state_with(datetime.date(2024, 4, 7)), path)
    proc = fairseq("generate", generate_args(toy, path), check=False, env={UNSAFE_ENV: "true"})
    assert proc.returncode != 0 and f"refusing to load a checkpoint while {UNSAFE_ENV}=true is set" in output(proc)


# ---------------------------------------------------------------- issue 14 item 8: crash-safe checkpoint_last.pt


def test_checkpoint_last_survives_a_copy_that_fails_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fairseq's save_checkpoint copies checkpointN.pt to checkpoint_last.pt with PathManager.copy(overwrite=True)."""
    new, last = tmp_path / "checkpoint2.pt", tmp_path / "checkpoint_last.pt"
    new.write_bytes(os.urandom(4096))
    old = os.urandom(3000)
    last.write_bytes(old)
    real_copyfile = shutil.copyfile

    def copy_half_then_fail(src: str, dst: str, *args: object, **kwargs: object) -> str:
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])  # e.g. disk full or SIGKILL after half the bytes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", copy_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        PathManager.copy(str(new), str(last), overwrite=True)
    assert last.read_bytes() == old  # the previous checkpoint_last.pt is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint2.pt", "checkpoint_last.pt"]  # no partial file
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)
    assert PathManager.copy(str(new), str(last), overwrite=True)
    assert last.read_bytes() == new.read_bytes()
    assert not PathManager.copy(str(new), str(last), overwrite=False)  # fairseq's overwrite=False contract
