"""Issue 8: multi-process training (torchrun + gloo on CPU), crash-safe resume after SIGKILL, bad-input sweep."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import NO_HUBERT_DROPOUT, REPO, TINY_MODEL_ARGS, ToyData, fairseq, output, quant_train_args, run_tool
from fairseq import options, tasks

import cress_bitnet  # noqa: F401
from cress_bitnet.data.manifest import ManifestRow, write_manifest
from cress_bitnet.quantization import QuantRecord

DETERMINISTIC = ["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0", "--batch-size", "4",
                 "--required-batch-size-multiple", "1", "--max-update", "3", "--disable-validation"]


def torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    return run_tool([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                     "-m", "fairseq_cli.train", *args])


def losses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"train_inner \| .*? loss=([\d.]+),", log)]


def checksums(path: Path) -> dict[int, set[str]]:
    by_update: dict[int, set[str]] = defaultdict(set)
    ranks: dict[int, set[int]] = defaultdict(set)
    for line in path.read_text().splitlines():
        update, rank, digest = line.split()
        by_update[int(update)].add(digest)
        ranks[int(update)].add(int(rank))
    assert all(r == {0, 1} for r in ranks.values()), ranks
    return by_update


@pytest.mark.parametrize(("arch", "ddp_backend", "port"), [
    ("hubert_transformer", "legacy_ddp", 29611),
    ("quant_transformer", "c10d", 29612),
])
def test_two_gloo_workers_stay_identical_and_match_update_freq_2(
        arch: str, ddp_backend: str, port: int, toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    def args(save: Path, *extra: str) -> list[str]:
        if arch == "hubert_transformer":
            base = toy.st_train_args(save, "--st-training", *NO_HUBERT_DROPOUT)
        else:
            base = quant_train_args(toy, fp_checkpoint, save, "--quant-targets", "decoder")
        return [*base, *DETERMINISTIC, *extra]

    sums = tmp_path / "checksums.txt"
    ddp_log = output(torchrun(args(tmp_path / "ddp", "--ddp-backend", ddp_backend, "--find-unused-parameters",
                                   "--param-checksum-file", str(sums)), port))
    assert "distributed init (rank 1)" in ddp_log
    by_update = checksums(sums)
    assert sorted(by_update) == [1, 2, 3]
    assert all(len(d) == 1 for d in by_update.values()), "replicas diverged"
    if arch == "quant_transformer":  # g and h are part of what was compared
        state = torch.load(tmp_path / "ddp" / "checkpoint_last.pt", weights_only=True)["model"]
        assert any(k.endswith(".g") for k in state) and any(k.endswith(".h") for k in state)
    single_log = output(fairseq("train", args(tmp_path / "single", "--update-freq", "2")))
    ddp_losses, single_losses = losses(ddp_log), losses(single_log)
    assert len(single_losses) == 3
    np.testing.assert_allclose(ddp_losses[:3], single_losses, rtol=0, atol=2e-3)


def test_sigkill_mid_run_resumes_to_max_update_with_quantizer_state(toy: ToyData, fp_checkpoint: Path,
                                                                     tmp_path: Path) -> None:
    save = tmp_path / "q"
    args = [sys.executable, "-m", "fairseq_cli.train", *quant_train_args(
        toy, fp_checkpoint, save, "--quant-method", "minmax", "--quant-targets", "decoder", "--quant-budget-mb",
        "0.01", "--quant-calib-samples", "4", "--save-interval-updates", "1", "--max-update", "8",
        "--disable-validation", "--no-epoch-checkpoints")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "num_updates=3" in line or not line:
            break
    time.sleep(0.3)  # land somewhere inside the next update or checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "num_updates=3" in seen, seen[-3000:]
    first = torch.load(save / "checkpoint_last.pt", weights_only=True)
    killed_at = first["optimizer_history"][-1]["num_updates"]
    assert 2 <= killed_at < 8

    resumed = run_tool(args)
    log = output(resumed)
    assert re.search(rf"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ {killed_at} updates\)", log)
    assert "rebuilding the quantized model recorded in the checkpoint being resumed" in log  # the plan survives
    assert "num_updates: 8 >= max_update: 8" in log
    final = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert final["optimizer_history"][-1]["num_updates"] == 8
    plan = QuantRecord.from_args(first["cfg"]["model"])
    assert QuantRecord.from_args(final["cfg"]["model"]) == plan and len(plan.modules) == 20  # the plan survives
    clips = [k for k in final["model"] if k.endswith(("weight_clip", "act_clip"))]
    assert clips and all(torch.isfinite(final["model"][k]).all() for k in clips)


# ---- bad inputs: one table, one clear sentence each ------------------------------------------------------------------
def _task(data: Path, *extra: str):  # noqa: ANN202
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation", "--st-training",
        "--arch", "hubert_transformer_postln", *TINY_MODEL_ARGS, "--conv-channels", "32", "--layernorm-embedding",
        "--max-tokens", "400000", *extra,
    ])
    return tasks.setup_task(args), args


def _build(toy: ToyData, *flags: str) -> None:
    task, args = _task(toy.st_dir, *flags)
    task.build_model(args)


def _with_tensor(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    state = torch.load(src, weights_only=True)
    edit(state)
    torch.save(state, dst)
    return dst


def _nan_first(state: dict) -> None:
    model = state["model"]
    key = next(k for k, v in model.items() if v.is_floating_point() and v.dim() == 2)
    model[key] = torch.full_like(model[key], float("nan"))


def _manifest_case(toy: ToyData, tmp: Path, rows_edit) -> None:  # noqa: ANN001
    data = tmp / "data"
    import shutil

    shutil.copytree(toy.st_dir, data, ignore=shutil.ignore_patterns("binary"))
    lines = (data / "dev.tsv").read_bytes().split(b"\n")
    (data / "dev.tsv").write_bytes(b"\n".join(rows_edit(lines)))
    task, _ = _task(data)
    task.load_dataset("dev")


def _replace_field(col: int, value: bytes):  # noqa: ANN202
    def edit(lines: list[bytes]) -> list[bytes]:
        fields = lines[2].split(b"\t")
        fields[col] = value
        lines[2] = b"\t".join(fields)
        return lines

    return edit


BAD_INPUTS = {
    "truncated checkpoint": (lambda toy, tmp, fp: _build(toy, "--hubert-model-path", str(
        _write(tmp / "t.pt", toy.hubert.read_bytes()[:5000]))), r"t\.pt: the file is truncated"),
    "not a checkpoint": (lambda toy, tmp, fp: _build(toy, "--hubert-model-path", str(
        _write(tmp / "notes.pt", b"hello, I am a text file\n"))), r"notes\.pt: .*not .*(checkpoint|torch)"),
    "MT checkpoint as HuBERT": (lambda toy, tmp, fp: _build(toy, "--hubert-model-path", str(toy.mt_checkpoint)),
                                r"is a fairseq MT checkpoint .*not a HuBERT checkpoint"),
    "HuBERT as MT checkpoint": (lambda toy, tmp, fp: _build(toy, "--hubert-model-path", str(toy.hubert),
                                                        "--load-pretrained-mt-encoder-decoder-from", str(toy.hubert)),
                                r"hubert_tiny_ls960\.pt: is a HuBERT checkpoint .*not an MT checkpoint"),
    "dimensions disagree with arch flags": (
        lambda toy, tmp, fp: _build(toy, "--hubert-model-path", str(toy.hubert), "--encoder-ffn-embed-dim", "48",
                                "--load-pretrained-mt-encoder-decoder-from", str(toy.mt_checkpoint)),
        r"shape mismatch for encoder\.transformer_layers\.0\.fc1\.\w+: checkpoint \(64.*\) vs model \(48.*arch flags"),
    "NaN in MT weights": (lambda toy, tmp, fp: _build(toy, "--hubert-model-path", str(toy.hubert),
                                                  "--load-pretrained-mt-encoder-decoder-from",
                                                  str(_with_tensor(toy.mt_checkpoint, tmp / "nan.pt", _nan_first))),
                          r"nan\.pt .*contains NaN or inf"),
    "NaN in HuBERT weights": (lambda toy, tmp, fp: _build(toy, "--hubert-model-path", str(
        _with_tensor(toy.hubert, tmp / "hnan.pt", _nan_first))), r"hnan\.pt: contains non-finite values in tensor"),
    "empty translation": (lambda toy, tmp, fp: _manifest_case(toy, tmp, _replace_field(4, b"")), r"dev\.tsv:3.*empty"),
    "non-UTF-8 text": (lambda toy, tmp, fp: _manifest_case(toy, tmp, _replace_field(4, b"caf\xe9")),
                       r"dev\.tsv:3.*UTF-8"),
    "duplicate id": (lambda toy, tmp, fp: _manifest_case(toy, tmp, lambda lines: [*lines[:3], lines[2], *lines[3:]]),
                     r"dev\.tsv:4: duplicate id .*first on line 3"),
    "unknown --quant-method": (lambda toy, tmp, fp: _build(toy, "--arch", "quant_transformer", "--quant-method", "b2"),
                               r"invalid choice: 'b2'"),
    "--quant-targets matches nothing": (
        lambda toy, tmp, fp: _build(toy, "--arch", "quant_transformer", "--pretrained-st-checkpoint", str(fp),
                                    "--quant-targets", "decoder.layers.*.fc9"), r"decoder\.layers\.\*\.fc9"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_sweep(case: str, toy: ToyData, fp_checkpoint: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture) -> None:
    make, message = BAD_INPUTS[case]
    with pytest.raises((ValueError, RuntimeError, SystemExit)) as err:
        make(toy, tmp_path, fp_checkpoint)
    text = str(err.value) if not isinstance(err.value, SystemExit) else capsys.readouterr().err
    assert re.search(message, text, re.S), text


def test_odd_wav_formats_are_converted_and_long_utterances_skipped_with_a_count(
        toy: ToyData, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Stereo, 8-bit and 8 kHz audio is downmixed and resampled to 16 kHz mono (documented), never rejected."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy.st_dir, data, ignore=shutil.ignore_patterns("binary"))
    rng = np.random.default_rng(0)
    wav = tmp_path / "odd.wav"
    sf.write(wav, (rng.uniform(-0.5, 0.5, (8000, 2))).astype(np.float32), 8000, subtype="PCM_U8")
    # n_frames counts samples at 16 kHz: 8000 samples at 8 kHz are 16000 (checked against the header since issue 14)
    rows = [ManifestRow(id="odd", audio=str(wav), n_frames=16000, src_text="a red cat", tgt_text="eine rote Katze",
                        line=2),
            ManifestRow(id="long", audio=str(wav), n_frames=16000, src_text="a red cat", tgt_text="eine rote Katze")]
    write_manifest(data / "dev.tsv", rows)
    task, _ = _task(data, "--max-audio-positions", "18000")
    task.load_dataset("dev")
    item = task.dataset("dev")[0]
    assert item["audio"].dim() == 1 and abs(len(item["audio"]) - 16000) <= 1
    task.dataset("dev").n_frames[1] = 20000  # pretend the second utterance is 1.25 s long
    with caplog.at_level(logging.WARNING):
        itr = task.get_batch_iterator(task.dataset("dev"), max_tokens=400000, ignore_invalid_inputs=True)
    assert sum(len(b) for b in itr.frozen_batches) == 1
    assert re.search(r"1 of 2 examples are longer than the limits \(18000, 512, 512\).* are skipped "
                     r"\(--skip-invalid-size-inputs-valid-test\): .*dev\.tsv:3 \(id long,", caplog.text)
