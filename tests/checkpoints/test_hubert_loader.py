"""HuBERT loading from both checkpoint layouts, without label dictionaries, and its error messages."""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from cress_bitnet.checkpoints import CheckpointError, register_safe_globals
from cress_bitnet.models.hubert_loader import build_hubert_from_cfg, hubert_output_dim, load_hubert
from data_prep.make_tiny_checkpoints import make_deltalm, make_hubert_cfg_format, make_hubert_legacy

PRETRAINING_ONLY = ("label_embs_concat", "final_proj.weight", "final_proj.bias")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    paths = {
        "legacy": out / "hubert_tiny_ls960.pt",
        "cfg": out / "hubert_tiny_cfg.pt",
        "deltalm": out / "deltalm_tiny.pt",
    }
    make_hubert_legacy(paths["legacy"], seed=3)
    make_hubert_cfg_format(paths["cfg"], seed=3)
    make_deltalm(paths["deltalm"], seed=3, vocab_size=40, extra_rows=5)
    return paths


def pickled_globals(path: Path) -> set[str]:
    """Every class/function a torch checkpoint's pickle names (independent of what is currently allowlisted)."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    return {str(arg).replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


TORCH_DEFAULT_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}


def _file_state(path: Path) -> dict:
    register_safe_globals()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("layout", ["legacy", "cfg"])
def test_every_tensor_loaded_from_file(ckpts: dict[str, Path], layout: str) -> None:
    model, cfg = load_hubert(ckpts[layout])
    file_sd = _file_state(ckpts[layout])["model"]
    model_sd = model.state_dict()
    assert set(file_sd) - set(model_sd) == set(PRETRAINING_ONLY)
    assert set(model_sd) <= set(file_sd)
    for key, tensor in model_sd.items():
        assert torch.equal(tensor, file_sd[key]), key
    assert model.final_proj is None and not hasattr(model, "label_embs_concat")
    assert "post_extract_proj.weight" in model_sd  # conv width != model width, as in Base
    assert hubert_output_dim(model) == 32
    assert cfg["model"]["encoder_layers"] == 2 and cfg["model"]["encoder_embed_dim"] == 32


@pytest.mark.parametrize("layout", ["legacy", "cfg"])
def test_hubert_cfg_is_plain_json_with_normalize(ckpts: dict[str, Path], layout: str) -> None:
    _, cfg = load_hubert(ckpts[layout])
    assert set(cfg) == {"model", "task"}
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["task"]["normalize"] is False
    assert cfg["task"]["labels"] == ["layer6.km500"]  # legacy stores "['layer6.km500']" as a string
    assert cfg["task"]["label_rate"] == 50.0 and cfg["model"]["label_rate"] == 50.0
    assert cfg["model"]["latent_temp"] == [2.0, 0.5, 0.999995]
    assert cfg["model"]["extractor_mode"] == "default"
    # checkpoint values kept when no override is given
    assert cfg["model"]["encoder_layerdrop"] == 0.05
    assert cfg["model"]["feature_grad_mult"] == 0.1
    assert cfg["model"]["dropout_input"] == 0.1


def test_overrides_reach_the_modules(ckpts: dict[str, Path]) -> None:
    model, cfg = load_hubert(
        ckpts["legacy"],
        dropout=0.2,
        attention_dropout=0.3,
        activation_dropout=0.15,
        encoder_layerdrop=0.0,
        feature_grad_mult=1.0,
        dropout_input=0.0,
        dropout_features=0.05,
    )
    assert model.encoder.layerdrop == 0.0
    assert model.feature_grad_mult == 1.0
    assert model.dropout_input.p == 0.0
    assert model.dropout_features.p == 0.05
    assert model.encoder.dropout == 0.2
    for layer in model.encoder.layers:
        assert layer.dropout1.p == 0.2 and layer.dropout3.p == 0.2
        assert layer.dropout2.p == 0.15
        assert layer.self_attn.dropout_module.p == 0.3
    assert cfg["model"]["encoder_layerdrop"] == 0.0 and cfg["model"]["dropout"] == 0.2
    # defaults stay the pretraining values
    plain, _ = load_hubert(ckpts["legacy"])
    assert plain.encoder.layerdrop == 0.05 and plain.feature_grad_mult == 0.1 and plain.dropout_input.p == 0.1
    with pytest.raises(ValueError, match="dropout"):
        load_hubert(ckpts["legacy"], dropout=-0.1)


def test_extract_features_shapes_and_padding(ckpts: dict[str, Path]) -> None:
    model, _ = load_hubert(ckpts["cfg"])
    model.eval()
    lengths = [16000, 12000]
    torch.manual_seed(0)
    wav = torch.randn(2, max(lengths))
    pad = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        x, out_pad = model.extract_features(source=wav, padding_mask=pad, mask=False)
    t_out = math.floor((max(lengths) - 400) / 320) + 1
    assert t_out == 49
    assert x.shape == (2, t_out, 32)
    assert out_pad.shape == (2, t_out) and out_pad.dtype == torch.bool
    valid = (~out_pad).sum(1).tolist()
    assert valid == [49, 37]
    assert valid[1] == math.floor((lengths[1] - 400) / 320) + 1
    assert torch.isfinite(x).all()


def test_rebuilt_model_matches_loaded_one(ckpts: dict[str, Path]) -> None:
    model, cfg = load_hubert(ckpts["legacy"], encoder_layerdrop=0.0)
    rebuilt = build_hubert_from_cfg(json.loads(json.dumps(cfg)))
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(a["encoder.layers.0.fc1.weight"], b["encoder.layers.0.fc1.weight"])  # random weights
    rebuilt.load_state_dict(a, strict=True)
    assert rebuilt.encoder.layerdrop == 0.0 and rebuilt.feature_grad_mult == 0.1
    model.eval()
    rebuilt.eval()
    wav = torch.randn(1, 4000)
    pad = torch.zeros(1, 4000, dtype=torch.bool)
    with torch.no_grad():
        xa, _ = model.extract_features(source=wav, padding_mask=pad)
        xb, _ = rebuilt.extract_features(source=wav, padding_mask=pad)
    assert torch.equal(xa, xb)
    with pytest.raises(ValueError, match="'model' and 'task'"):
        build_hubert_from_cfg({"model": cfg["model"]})


@pytest.mark.filterwarnings("ignore::UserWarning")  # hydra deprecation chatter inside fairseq
def test_fairseq_loads_legacy_file_with_weights_only(ckpts: dict[str, Path]) -> None:
    from fairseq import checkpoint_utils

    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    extra = pickled_globals(ckpts["legacy"]) - TORCH_DEFAULT_GLOBALS
    assert extra == {"argparse.Namespace", "fairseq.data.dictionary.Dictionary"}
    register_safe_globals()
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(ckpts["legacy"])])
    assert not Path(cfg.task.data).exists()  # dictionaries came from task_state, not from disk
    assert models[0].num_classes == [504]
    assert list(cfg.task.labels) == ["layer6.km500"]
    file_sd = _file_state(ckpts["legacy"])["model"]
    for key, tensor in models[0].state_dict().items():
        assert torch.equal(tensor, file_sd[key]), key


def test_loader_uses_weights_only_and_not_fairseq(ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from fairseq import checkpoint_utils

    calls: list[dict] = []
    real_load = torch.load

    def recording_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("fairseq's checkpoint loader must not be used")

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(checkpoint_utils, "load_checkpoint_to_cpu", forbidden)
    monkeypatch.setattr(checkpoint_utils, "load_model_ensemble_and_task", forbidden)
    load_hubert(ckpts["legacy"])
    assert calls and all(c.get("weights_only") is True for c in calls)


# ---------------------------------------------------------------- errors


def test_missing_file_names_path_and_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=r"nope\.pt.*--hubert-model-path"):
        load_hubert(missing)
    with pytest.raises(CheckpointError, match="--w2v-path"):
        load_hubert(missing, flag="--w2v-path")


def test_truncated_file(ckpts: dict[str, Path], tmp_path: Path) -> None:
    data = ckpts["legacy"].read_bytes()
    bad = tmp_path / "half.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half\.pt"):
        load_hubert(bad)


def test_mt_checkpoint_given_as_hubert(tmp_path: Path) -> None:
    mt = {
        "args": None,
        "cfg": {
            "model": argparse.Namespace(_name="transformer", arch="transformer", encoder_layers=1),
            "task": {"_name": "translation", "data": "bin"},
        },
        "model": OrderedDict(
            [
                ("encoder.embed_tokens.weight", torch.zeros(10, 4)),
                ("encoder.layers.0.fc1.weight", torch.zeros(8, 4)),
                ("decoder.layers.0.fc1.weight", torch.zeros(8, 4)),
                ("decoder.output_projection.weight", torch.zeros(10, 4)),
            ]
        ),
        "optimizer_history": [],
        "extra_state": {},
        "task_state": {},
    }
    path = tmp_path / "mt.pt"
    torch.save(mt, path)
    with pytest.raises(CheckpointError) as err:
        load_hubert(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "is a fairseq MT checkpoint (arch transformer), not a HuBERT checkpoint" in msg
    assert "--load-pretrained-mt-encoder-decoder-from" in msg


def test_other_arch_given_as_hubert(tmp_path: Path) -> None:
    path = tmp_path / "w2v.pt"
    torch.save({"args": None, "cfg": {"model": {"_name": "wav2vec2"}, "task": {}}, "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"'wav2vec2' checkpoint, not a pretrained HuBERT"):
        load_hubert(path)


def test_deltalm_given_as_hubert(ckpts: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match=r"deltalm_tiny\.pt: is a DeltaLM pretrained checkpoint"):
        load_hubert(ckpts["deltalm"])


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weight_named(ckpts: dict[str, Path], tmp_path: Path, bad_value: float) -> None:
    state = _file_state(ckpts["legacy"])
    state["model"]["encoder.layers.1.fc1.weight"][3, 5] = bad_value
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"nan\.pt: contains non-finite values in tensor encoder\.layers\.1\.fc1"):
        load_hubert(path)


def test_missing_weight_is_an_error(ckpts: dict[str, Path], tmp_path: Path) -> None:
    state = _file_state(ckpts["cfg"])
    del state["model"]["encoder.layers.1.fc2.bias"]
    state["model"]["encoder.extra.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing \['encoder\.layers\.1\.fc2\.bias'\].*'encoder\.extra\.weight'"):
        load_hubert(path)


def test_pretraining_only_tensors_may_be_absent(ckpts: dict[str, Path], tmp_path: Path) -> None:
    state = _file_state(ckpts["cfg"])
    for key in PRETRAINING_ONLY:
        del state["model"][key]
    path = tmp_path / "stripped.pt"
    torch.save(state, path)
    model, _ = load_hubert(path)
    assert torch.equal(model.state_dict()["mask_emb"], state["model"]["mask_emb"])


class _NotAllowed:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize(
    ("payload", "global_name"),
    # collections.Counter is in torch's default allowlist; a pathlib path in saved args is a realistic outsider.
    [(pathlib.PurePosixPath("/data/x"), "pathlib.PurePosixPath"), (_NotAllowed(), "_NotAllowed")],
)
def test_non_allowlisted_global_refused(tmp_path: Path, payload: object, global_name: str) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": payload}, path)
    with pytest.raises(CheckpointError, match=rf"evil\.pt.*global '[\w.]*{global_name}'"):
        load_hubert(path)
