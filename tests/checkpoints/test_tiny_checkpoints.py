"""The tiny fixtures have the on-disk layout of hubert_base_ls960.pt, a trainer checkpoint and deltalm-base.pt."""

from __future__ import annotations

import argparse
import json
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch

from cress_bitnet.checkpoints import register_safe_globals
from data_prep.make_tiny_checkpoints import main, make_deltalm, make_hubert_cfg_format, make_hubert_legacy

TORCH_DEFAULT_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}


def pickled_globals(path: Path) -> set[str]:
    """Every class/function the checkpoint's pickle names, whatever is allowlisted in this process right now."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    return {str(arg).replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def _load(path: Path) -> dict:
    register_safe_globals()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def hubert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("hub")
    legacy, cfg = out / "hubert_tiny_ls960.pt", out / "hubert_tiny_cfg.pt"
    make_hubert_legacy(legacy, seed=1)
    make_hubert_cfg_format(cfg, seed=1)
    return legacy, cfg


def test_legacy_layout_matches_released_base(hubert_files: tuple[Path, Path]) -> None:
    state = _load(hubert_files[0])
    assert set(state) == {"args", "model", "optimizer_history", "extra_state", "task_state"}
    args = state["args"]
    assert isinstance(args, argparse.Namespace)
    assert (args.task, args.arch, args.criterion) == ("hubert_pretraining", "hubert", "hubert")
    assert args.labels == "['layer6.km500']" and isinstance(args.labels, str)
    assert args.label_rate == 50 and args.fp16 is True and args.normalize is False
    assert args.data.startswith("/nonexistent/") and not Path(args.data).exists()
    assert (args.encoder_embed_dim, args.encoder_layers, args.encoder_ffn_embed_dim) == (32, 2, 64)
    assert (args.encoder_attention_heads, args.conv_pos, args.conv_pos_groups, args.final_dim) == (2, 16, 4, 16)
    assert args.untie_final_proj is False and args.extractor_mode == "default"
    assert args.encoder_layerdrop == 0.05 and args.feature_grad_mult == 0.1
    assert args.optimizer == "adam" and args.lr_scheduler == "polynomial_decay"
    assert pickled_globals(hubert_files[0]) - TORCH_DEFAULT_GLOBALS == {
        "argparse.Namespace",
        "fairseq.data.dictionary.Dictionary",
    }
    assert len(vars(args)) > 150  # a flat namespace of all common/task/model fields
    hist = state["optimizer_history"]
    assert isinstance(hist, list) and {"criterion_name", "optimizer_name", "lr_scheduler_state", "num_updates"} <= set(
        hist[-1]
    )
    assert isinstance(state["extra_state"], dict) and "train_iterator" in state["extra_state"]
    (dictionary,) = state["task_state"]["dictionaries"]
    assert len(dictionary) == 504
    assert dictionary.symbols[:6] == ["<s>", "<pad>", "</s>", "<unk>", "0", "1"] and dictionary.symbols[-1] == "499"
    model = state["model"]
    assert model["label_embs_concat"].shape == (504, 16)
    assert model["final_proj.weight"].shape == (16, 32)
    assert model["encoder.pos_conv.0.weight_v"].shape == (32, 8, 16)
    assert model["encoder.pos_conv.0.weight_g"].shape == (1, 1, 16)
    assert model["feature_extractor.conv_layers.0.0.weight"].shape == (48, 1, 10)
    assert model["feature_extractor.conv_layers.0.2.weight"].shape == (48,)  # group norm only in layer 0
    assert "feature_extractor.conv_layers.1.2.weight" not in model
    assert model["post_extract_proj.weight"].shape == (32, 48)
    assert list(model)[:3] == ["mask_emb", "label_embs_concat", "feature_extractor.conv_layers.0.0.weight"]
    assert all(t.dtype == torch.float32 for t in model.values())


def test_cfg_layout_is_plain_trainer_dict(hubert_files: tuple[Path, Path]) -> None:
    state = _load(hubert_files[1])
    assert state["args"] is None
    cfg = state["cfg"]
    assert type(cfg) is dict and type(cfg["model"]) is dict and type(cfg["task"]) is dict
    json.dumps(cfg)  # only plain containers and scalars, as OmegaConf.to_container produces
    assert cfg["model"]["_name"] == "hubert" and cfg["task"]["_name"] == "hubert_pretraining"
    assert cfg["task"]["labels"] == ["layer6.km500"] and cfg["task"]["normalize"] is False
    assert {"common", "dataset", "optimization", "checkpoint", "criterion", "optimizer", "lr_scheduler"} <= set(cfg)
    assert len(state["task_state"]["dictionaries"][0]) == 504
    assert pickled_globals(hubert_files[1]) - TORCH_DEFAULT_GLOBALS == {"fairseq.data.dictionary.Dictionary"}
    legacy = _load(hubert_files[0])["model"]
    assert list(state["model"]) == list(legacy)
    assert all(torch.equal(state["model"][k], legacy[k]) for k in legacy)


def _expected_deltalm_keys(enc: int, dec: int) -> set[str]:
    keys = set()
    for side in ("src", "tgt"):
        keys |= {
            f"{side}_embedding.embed_tokens.weight",
            f"{side}_embedding.embed_positions.weight",
            f"{side}_embedding.emb_layer_norm.weight",
            f"{side}_embedding.emb_layer_norm.bias",
        }
    wb = ("weight", "bias")
    for i in range(enc):
        keys |= {f"encoder.layers.{i}.self_attn.{p}_proj.{w}" for p in "q k v out".split() for w in wb}
        keys |= {f"encoder.layers.{i}.ffn.{f}.{w}" for f in ("fc1", "fc2") for w in wb}
        keys |= {f"encoder.layers.{i}.{n}.{w}" for n in ("self_attn_layer_norm", "final_layer_norm") for w in wb}
    for i in range(dec):
        for attn in ("self_attn", "encoder_attn"):
            keys |= {f"decoder.layers.{i}.{attn}.{p}_proj.{w}" for p in "q k v out".split() for w in wb}
        for ffn in ("ffn_1", "ffn_2"):
            keys |= {f"decoder.layers.{i}.{ffn}.{f}.{w}" for f in ("fc1", "fc2") for w in wb}
        norms = ("self_attn_layer_norm", "encoder_attn_layer_norm", "ffn_layer_norm", "final_layer_norm")
        keys |= {f"decoder.layers.{i}.{n}.{w}" for n in norms for w in wb}
    return keys


@pytest.mark.parametrize(("enc", "dec"), [(2, 2), (1, 3)])
def test_deltalm_keys_count_shapes(tmp_path: Path, enc: int, dec: int) -> None:
    path = tmp_path / "deltalm.pt"
    info = make_deltalm(path, encoder_layers=enc, decoder_layers=dec, dim=16, ffn=24, heads=2, max_positions=64,
                        vocab_size=30, extra_rows=7)
    assert pickled_globals(path) <= TORCH_DEFAULT_GLOBALS
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert list(state) == ["weights"]
    w = state["weights"]
    assert set(w) == _expected_deltalm_keys(enc, dec)
    assert len(w) == 8 + 16 * enc + 32 * dec == info["num_tensors"]
    assert w["src_embedding.embed_tokens.weight"].shape == (37, 16)
    assert w["tgt_embedding.embed_tokens.weight"].shape == (37, 16)
    assert w["src_embedding.embed_positions.weight"].shape == (66, 16)
    assert torch.equal(w["src_embedding.embed_positions.weight"], w["tgt_embedding.embed_positions.weight"])
    assert torch.equal(w["src_embedding.emb_layer_norm.weight"], w["tgt_embedding.emb_layer_norm.weight"])
    assert not torch.equal(w["src_embedding.embed_tokens.weight"], w["tgt_embedding.embed_tokens.weight"])
    assert torch.count_nonzero(w["src_embedding.embed_tokens.weight"][1]) == 0  # padding row
    assert w["encoder.layers.0.ffn.fc1.weight"].shape == (24, 16)
    assert w["encoder.layers.0.ffn.fc2.weight"].shape == (16, 24)
    assert w[f"decoder.layers.{dec - 1}.ffn_1.fc1.bias"].shape == (24,)
    assert w["decoder.layers.0.encoder_attn.out_proj.weight"].shape == (16, 16)
    assert w["decoder.layers.0.ffn_layer_norm.bias"].shape == (16,)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in w.values())
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == info
    assert (sidecar["embed_tokens_rows"], sidecar["embed_positions_rows"], sidecar["vocab_size"]) == (37, 66, 30)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state = _load(path)
    return state["weights"] if "weights" in state else state["model"]


def test_generation_is_deterministic(tmp_path: Path, hubert_files: tuple[Path, Path]) -> None:
    again = tmp_path / "again.pt"
    make_hubert_legacy(again, seed=1)
    a, b = _tensors(hubert_files[0]), _tensors(again)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    make_hubert_legacy(tmp_path / "other.pt", seed=2)
    other = _tensors(tmp_path / "other.pt")
    assert not torch.equal(a["encoder.layers.0.fc1.weight"], other["encoder.layers.0.fc1.weight"])
    make_deltalm(tmp_path / "d1.pt", seed=5)
    make_deltalm(tmp_path / "d2.pt", seed=5)
    d1, d2 = _tensors(tmp_path / "d1.pt"), _tensors(tmp_path / "d2.pt")
    assert list(d1) == list(d2) and all(torch.equal(d1[k], d2[k]) for k in d1)


def test_cli_writes_all_files_with_vocab_from_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vocab = tmp_path / "dict.txt"
    vocab.write_text("".join(f"▁w{i} 1\n" for i in range(20)))
    out = tmp_path / "out"
    main(["--out", str(out), "--no-verify", "--num-units", "20", "--deltalm-vocab-from", str(vocab),
          "--deltalm-extra-rows", "3", "--deltalm-max-positions", "32"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 3
    assert {p.name for p in out.iterdir()} == {
        "hubert_tiny_ls960.pt", "hubert_tiny_cfg.pt", "deltalm_tiny.pt", "deltalm_tiny.json"
    }
    w = _tensors(out / "deltalm_tiny.pt")
    assert w["tgt_embedding.embed_tokens.weight"].shape == (24 + 3, 32)  # len(dict) = 4 specials + 20
    assert w["src_embedding.embed_positions.weight"].shape == (34, 32)
    assert len(_load(out / "hubert_tiny_ls960.pt")["task_state"]["dictionaries"][0]) == 24


def test_filterbank_frontend_resolves_pure_tones(tmp_path: Path) -> None:
    """The filterbank HuBERT's conv front end answers each tone in the mel band around it, at 50 frames a second."""
    from cress_bitnet.models.hubert_loader import load_hubert
    from data_prep.make_tiny_checkpoints import _mel, _mel_to_hz, verify_with_fairseq

    bands = 16
    path = tmp_path / "hubert_fb.pt"
    make_hubert_legacy(path, seed=1, conv_dim=bands, frontend="filterbank")
    assert _load(path)["args"].conv_feature_layers == f"[({4 * bands},400,160)] + [({bands},2,2)]"
    assert verify_with_fairseq(path) == 504
    hubert, _cfg = load_hubert(path)
    hubert.eval()
    edges = _mel_to_hz(torch.linspace(float(_mel(torch.tensor(80.0))), float(_mel(torch.tensor(7600.0))), bands + 2))
    t = torch.arange(16000) / 16000
    for band in (1, 6, 11, 14):
        tone = torch.sin(2 * torch.pi * float(edges[band + 1]) * t) + 0.01 * torch.randn(16000)
        with torch.no_grad():
            feats = hubert.feature_extractor(tone[None])[0]  # bands x frames
        assert feats.shape == (bands, 49)
        assert int(feats.mean(1).argmax()) == band
    with pytest.raises(ValueError, match="frontend must be one of"):
        make_hubert_legacy(tmp_path / "bad.pt", frontend="mfcc")
    with pytest.raises(ValueError, match="frame_pool 4: .*random front end"):
        make_hubert_legacy(tmp_path / "bad.pt", frame_pool=4)


def test_filterbank_frame_pool_sets_the_frame_rate(tmp_path: Path) -> None:
    from cress_bitnet.models.hubert_loader import load_hubert

    path = tmp_path / "hubert_fb25.pt"
    make_hubert_legacy(path, seed=1, conv_dim=8, frontend="filterbank", frame_pool=4)
    args = _load(path)["args"]
    assert args.conv_feature_layers == "[(32,400,160)] + [(8,4,4)]" and args.label_rate == 25
    hubert, _cfg = load_hubert(path)
    wave = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 8000:] = True
    with torch.no_grad():
        feats, feat_padding = hubert.extract_features(source=wave, padding_mask=padding, mask=False)
    assert feats.shape[:2] == (2, 24)  # (16000 - 400) // 160 + 1 = 98 frames of 10 ms, pooled by 4
    assert (~feat_padding).sum(1).tolist() == [24, 13]  # HuBERT marks a frame padded only if all its samples are
