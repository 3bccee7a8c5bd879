"""Issue 13 items 1-3: CRESS and onebit-st checkpoints load wherever a checkpoint is accepted, as the same model."""

from __future__ import annotations

import json
import logging
import re
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_MODEL_ARGS, ToyData, fairseq, generate_args, output
from fairseq import checkpoint_utils, options, tasks

import cress_bitnet  # noqa: F401  (registers the task/models and installs the fairseq patches)
from cress_bitnet.checkpoints import (
    QUANT_RECORD_ARG,
    STANDARDIZED_AUDIO_ARG,
    CheckpointError,
    load_checkpoint,
    upgrade_to_native,
)
from cress_bitnet.models.st_checkpoint import build_fp_model

DROPPED = {"encoder.hubert_model.label_embs_concat", "encoder.embed_positions._float_tensor",
           "decoder.embed_positions._float_tensor"}


def _task(toy: ToyData, *extra: str) -> tuple[object, Namespace]:
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(toy.st_dir), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--st-training", "--arch", "hubert_transformer_postln", *TINY_MODEL_ARGS, "--conv-channels", "32",
        "--max-tokens", "400000", *extra,
    ])
    return tasks.setup_task(args), args


def _batch(task: object) -> dict:
    dataset = task.speech_dataset("tst-COMMON", shuffle=False)
    return dataset.collater([dataset[i] for i in range(3)])


@torch.no_grad()
def _teacher_forced(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    net_input = {k: v for k, v in batch["net_input"].items()}
    return model.get_normalized_probs(model(**net_input), log_probs=True)


# ---------------------------------------------------------------- recognition and the in-memory upgrade


@pytest.mark.parametrize(("kind", "fmt", "arch"), [
    ("cress", "cress", "hubert_transformer_postln"),
    ("onebit_fp", "cress", "hubert_transformer_pruning_layer"),
    ("onebit_svcd", "onebit_st_svcd", "quant_transformer"),
])
def test_foreign_state_is_recognised_and_rewritten_as_native(
        kind: str, fmt: str, arch: str, foreign_checkpoints: dict[str, Path], fp_checkpoint: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path = foreign_checkpoints[kind]
    state = load_checkpoint(path)
    assert DROPPED <= set(state["model"])
    with caplog.at_level(logging.INFO):
        report = upgrade_to_native(state, path)
    assert report is not None and report.format.name == fmt
    assert f"{path}: recognised as {report.format.description} (architecture {arch})" in caplog.text
    assert set(report.dropped) == DROPPED
    for key in DROPPED:  # one log line each, with the reason
        assert re.search(rf"{re.escape(str(path))}: dropped {re.escape(key)}: \w", caplog.text)
    native = load_checkpoint(fp_checkpoint)["model"]
    extra = set(state["model"]) - set(native)
    assert set(native) <= set(state["model"])
    assert all(k.endswith((".g", ".h", ".norm.weight", ".norm.bias")) for k in extra) and bool(extra) == (
        kind == "onebit_svcd")
    args = report.args
    assert args.load_pretrained_mt_encoder_decoder_from is None  # the stored MT path is gone and not needed
    assert getattr(args, STANDARDIZED_AUDIO_ARG) is True  # CRESS always standardized its waveforms
    assert "no longer exists" in caplog.text and "hubert_model_path" in caplog.text
    again = upgrade_to_native(state, path)  # idempotent
    assert not again.dropped and not again.args_set


def test_onebit_svcd_gets_one_quant_record_in_our_names(foreign_checkpoints: dict[str, Path]) -> None:
    """Needs the lead's quant_transformer to decode; the record is what it reads (teacher-forced check after merge)."""
    path = foreign_checkpoints["onebit_svcd"]
    state = load_checkpoint(path)
    report = upgrade_to_native(state, path)
    record = json.loads(getattr(report.args, QUANT_RECORD_ARG))
    expected = {f"decoder.layers.{i}.encoder_attn.{p}_proj" for i in range(2) for p in ("q", "k", "v", "out")}
    assert record["version"] == 1 and record["packed"] is False
    assert set(record["modules"]) == expected
    for name, spec in record["modules"].items():
        assert spec == {"method": "svcd", "init": "constraint", "act_quant": "seed", "num_groups": 1}
        for tensor in ("weight", "bias", "g", "h", "norm.weight", "norm.bias"):
            assert f"{name}.{tensor}" in state["model"]
    assert report.args.arch == "quant_transformer"


# ---------------------------------------------------------------- same weights, same outputs


@pytest.mark.parametrize("kind", ["cress", "onebit_fp"])
def test_pretrained_st_and_kd_teacher_path_gives_the_native_outputs(
        kind: str, toy: ToyData, fp_checkpoint: Path, foreign_checkpoints: dict[str, Path]) -> None:
    """build_fp_model serves --pretrained-st-checkpoint and --kd-teacher; HuBERT comes from --hubert-model-path."""
    task, _ = _task(toy)
    batch = _batch(task)
    native, _ = build_fp_model(str(fp_checkpoint), task, flag="--pretrained-st-checkpoint")
    with pytest.raises(CheckpointError, match=r"hubert_base_ls960\.pt.*--hubert-model-path.*--model-overrides"):
        build_fp_model(str(foreign_checkpoints[kind]), task, flag="--pretrained-st-checkpoint")
    foreign, args = build_fp_model(str(foreign_checkpoints[kind]), task, flag="--kd-teacher",
                                   overrides=Namespace(hubert_model_path=str(toy.hubert)))
    assert getattr(args, STANDARDIZED_AUDIO_ARG) is True and args.hubert_cfg  # both travel to quant_transformer
    assert torch.equal(_teacher_forced(foreign, batch), _teacher_forced(native, batch))


def test_fairseq_load_path_gives_the_native_outputs(toy: ToyData, fp_checkpoint: Path,
                                                    foreign_checkpoints: dict[str, Path]) -> None:
    """fairseq-generate's own loader (load_model_ensemble), with the HuBERT file passed by --model-overrides."""
    task, _ = _task(toy)
    batch = _batch(task)
    (native,), _ = checkpoint_utils.load_model_ensemble([str(fp_checkpoint)], task=task)
    with pytest.raises(CheckpointError, match=r"hubert_base_ls960\.pt.*--model-overrides"):
        checkpoint_utils.load_model_ensemble([str(foreign_checkpoints["cress"])], task=task)
    (cress,), cfg = checkpoint_utils.load_model_ensemble(
        [str(foreign_checkpoints["cress"])], task=task, arg_overrides={"hubert_model_path": str(toy.hubert)})
    assert torch.equal(_teacher_forced(cress, batch), _teacher_forced(native, batch))


def test_cress_checkpoint_initialises_the_text_model(toy: ToyData, fp_checkpoint: Path,
                                                    foreign_checkpoints: dict[str, Path]) -> None:
    """--load-pretrained-mt-encoder-decoder-from: CRESS's MT stages save this same model; their files are MT inits."""
    built = {}
    for kind, path in (("native", fp_checkpoint), ("cress", foreign_checkpoints["cress"])):
        task, args = _task(toy, "--layernorm-embedding", "--hubert-model-path", str(toy.hubert),
                           "--load-pretrained-mt-encoder-decoder-from", str(path))
        model = task.build_model(args)
        built[kind] = (model.state_dict(), model.mt_load_report)
    (native, native_report), (cress, cress_report) = built["native"], built["cress"]
    assert (native_report.fmt, cress_report.fmt) == ("hubert_transformer", "cress")
    assert cress_report.loaded == native_report.loaded and not cress_report.missing and not cress_report.unexpected
    text = [k for k in native if not k.startswith(("encoder.hubert_model.", "encoder.subsampler."))]
    assert len(text) > 40 and all(torch.equal(cress[k], native[k]) for k in text)


# ---------------------------------------------------------------- waveform standardization follows the checkpoint


def test_decoding_a_cress_checkpoint_follows_its_standardization(
        toy: ToyData, foreign_checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    task, _ = _task(toy)
    assert task.data_cfg.standardize_audio is False  # the toy config.yaml: raw waveforms
    with caplog.at_level(logging.WARNING):
        checkpoint_utils.load_model_ensemble([str(foreign_checkpoints["cress"])], task=task,
                                             arg_overrides={"hubert_model_path": str(toy.hubert)})
    assert task.data_cfg.standardize_audio is True
    assert "trained on standardized waveforms" in caplog.text
    assert "'standardize_audio: true' in" in caplog.text and "config.yaml" in caplog.text
    wave = task.speech_dataset("tst-COMMON", shuffle=False)[0]["audio"]
    assert abs(float(wave.mean())) < 1e-4 and abs(float(wave.std(unbiased=False)) - 1) < 1e-3


def test_restore_hook_switches_loaded_datasets_and_records_the_choice(
        toy: ToyData, foreign_checkpoints: dict[str, Path]) -> None:
    """fairseq-train loads the valid sets before --restore-file; the restore must reach them too."""
    task, args = _task(toy)
    model_args = Namespace(**vars(args))
    task.follow_checkpoint_audio(None, model_args)  # a fresh run records what it feeds
    assert getattr(model_args, STANDARDIZED_AUDIO_ARG) is False
    task.load_dataset("dev")
    state = load_checkpoint(foreign_checkpoints["cress"])
    report = upgrade_to_native(state, foreign_checkpoints["cress"])
    task.checkpoint_restored(report, None)
    assert task.datasets["dev"].standardize_audio is True
    assert getattr(model_args, STANDARDIZED_AUDIO_ARG) is True  # the next checkpoint says so


# ---------------------------------------------------------------- through the fairseq command lines


@pytest.mark.slow
def test_cress_checkpoint_decodes_with_fairseq_generate(toy: ToyData, foreign_checkpoints: dict[str, Path]) -> None:
    path = foreign_checkpoints["cress"]
    proc = fairseq("generate", generate_args(toy, path), check=False)
    assert proc.returncode != 0 and "--model-overrides" in output(proc)
    log = output(fairseq("generate", generate_args(
        toy, path, "--model-overrides", repr({"hubert_model_path": str(toy.hubert)}))))
    assert "recognised as a CRESS / onebit-st FP speech-translation checkpoint" in log
    assert "dropped encoder.hubert_model.label_embs_concat" in log
    assert "following the checkpoint (standardize_audio=true)" in log
    assert len(re.findall(r"^H-\d+\t", log, flags=re.M)) == 6 and re.search(r"BLEU\S* = [\d.]+", log)


@pytest.mark.slow
def test_cress_checkpoint_restores_with_restore_file(toy: ToyData, foreign_checkpoints: dict[str, Path],
                                                     tmp_path: Path) -> None:
    path = foreign_checkpoints["cress"]
    base = toy.st_train_args(tmp_path, "--st-training", "--disable-validation", "--restore-file", str(path),
                             "--max-update", "5")
    proc = fairseq("train", base, check=False)
    assert proc.returncode != 0
    assert re.search(r"cannot restore its optimizer state.*label_embs_concat.*pass --reset-optimizer", output(proc))
    log = output(fairseq("train", [*base, "--reset-optimizer"]))
    assert "recognised as a CRESS" in log and "following the checkpoint (standardize_audio=true)" in log
    saved = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert saved["optimizer_history"][-1]["num_updates"] == 5
    assert getattr(saved["cfg"]["model"], STANDARDIZED_AUDIO_ARG) is True
    assert "encoder.hubert_model.label_embs_concat" not in saved["model"]


def test_onebit_st_arch_names_are_registered() -> None:
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    for name, pre_ln in (("hubert_transformer_pruning_layer", True),
                         ("hubert_transformer_pruning_layer_postln", False)):
        assert ARCH_MODEL_REGISTRY[name].__name__ == "HubertTransformerModel"
        args = Namespace()
        ARCH_CONFIG_REGISTRY[name](args)
        assert (args.encoder_normalize_before, args.decoder_normalize_before) == (pre_ln, pre_ln)


# ---------------------------------------------------------------- the quant_transformer side (after the merge)


def test_onebit_svcd_equals_the_same_weights_loaded_natively(toy: ToyData, fp_checkpoint: Path,
                                                             foreign_checkpoints: dict[str, Path]) -> None:
    """fairseq's loader on the onebit-st file vs our SVCD layers (seed activation rescale) holding the same tensors."""
    from cress_bitnet.quantization import QuantRecord, SVCDConfig, quantize_

    task, _ = _task(toy, "--hubert-model-path", str(toy.hubert))
    models, _ = checkpoint_utils.load_model_ensemble([str(foreign_checkpoints["onebit_svcd"])], task=task,
                                                     arg_overrides={"hubert_model_path": str(toy.hubert)})
    loaded = models[0]
    record = QuantRecord.of_model(loaded)
    assert len(record.modules) == 8 and {c.act_quant for c in record.modules.values()} == {"seed"}
    native, _ = build_fp_model(str(fp_checkpoint), task, flag="--pretrained-st-checkpoint")
    quantize_(native, SVCDConfig(act_quant="seed"), "decoder.layers.*.encoder_attn.*_proj")
    native.load_state_dict(loaded.state_dict())  # same tensor names: exactly the file's BitLinear tensors
    raw = torch.load(foreign_checkpoints["onebit_svcd"], weights_only=True)["model"]
    for key in ("decoder.layers.1.encoder_attn.v_proj.g", "decoder.layers.0.encoder_attn.q_proj.norm.bias"):
        assert torch.equal(native.state_dict()[key], raw[key])
    batch = _batch(task)
    assert torch.equal(_teacher_forced(loaded, batch), _teacher_forced(native, batch))


@pytest.mark.slow
def test_onebit_svcd_decodes_and_trains_one_more_update(toy: ToyData, foreign_checkpoints: dict[str, Path],
                                                        tmp_path: Path) -> None:
    path = foreign_checkpoints["onebit_svcd"]
    log = output(fairseq("generate", generate_args(
        toy, path, "--model-overrides", repr({"hubert_model_path": str(toy.hubert)}))))
    assert "onebit-st SVCD" in log and len(re.findall(r"^H-\d+\t", log, flags=re.M)) == 6
    done = torch.load(path, weights_only=True)["optimizer_history"][-1]["num_updates"]
    args = [str(toy.st_dir), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
            "--config-yaml", "config.yaml", "--train-subset", "train", "--valid-subset", "dev", "--st-training",
            "--arch", "quant_transformer", "--hubert-model-path", str(toy.hubert), "--quant-act", "per_token",
            "--restore-file", str(path), "--reset-optimizer", "--criterion", "speech_and_text_translation",
            "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "400000", "--max-update", str(done + 1),
            "--save-dir", str(tmp_path), "--disable-validation", "--cpu", "--num-workers", "0", "--seed", "1"]
    train = output(fairseq("train", args))
    assert "rebuilding the quantized model recorded in the checkpoint being resumed" in train
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert saved["optimizer_history"][-1]["num_updates"] == done + 1
    from cress_bitnet.quantization import QuantRecord

    record = QuantRecord.from_args(saved["cfg"]["model"])  # switched to per-token activations by the flag
    assert len(record.modules) == 8 and {c.act_quant for c in record.modules.values()} == {"per_token"}


@pytest.mark.slow
def test_cress_checkpoint_starts_a_quant_transformer_run(toy: ToyData, foreign_checkpoints: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """The paper's workflow from an existing CRESS FP model: --pretrained-st-checkpoint cress.pt, then SVCD."""
    from conftest import quant_train_args

    log = output(fairseq("train", quant_train_args(toy, foreign_checkpoints["cress"], tmp_path, "--hubert-model-path",
                                                   str(toy.hubert), "--max-update", "1", "--disable-validation")))
    assert "recognised as a CRESS" in log and re.search(r"8 modules swapped for svcd", log)
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert saved["optimizer_history"][-1]["num_updates"] == 1 and "encoder.hubert_model.label_embs_concat" not in \
        saved["model"]
