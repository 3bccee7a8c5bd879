"""Issue 16 items 4-5: ``cress-bitnet-translate`` on plain audio files gives fairseq-generate's translations, from the
trained checkpoint and from its packed ``.pt`` and safetensors exports; safetensors files load without pickle."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from conftest import REPO, ToyData, fairseq, output, run_tool

import cress_bitnet  # noqa: F401
from cress_bitnet.checkpoints.safetensors_format import load_state
from cress_bitnet.data.audio import read_audio
from cress_bitnet.data.manifest import read_manifest
from cress_bitnet.resources import CONFIG_KEY, DICTIONARY_KEY, SPM_KEY

# a few updates of training: the toy model's translations are short repetitive strings, so the hypothesis scores are
# compared too (they differ per utterance and move with every change of the input audio)
GEN = ["--beam", "2", "--max-len-b", "10"]


def detok_hypotheses(log: str) -> dict[int, tuple[str, float]]:
    return {int(i): (h, float(s)) for i, s, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", log, flags=re.M)}


@pytest.fixture(scope="module")
def audio_dir(toy: ToyData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Four toy utterances as files: 16 kHz mono wav and flac, and one written as 22.05 kHz stereo; plus a data folder
    whose manifest lists exactly these files, for fairseq-generate."""
    root = tmp_path_factory.mktemp("translate_audio")
    rows = read_manifest(toy.st_dir / "tst-COMMON.tsv")[:4]
    files = []
    for i, row in enumerate(rows):
        wave = read_audio(row.audio).numpy()
        if i == 2:
            sr = 22050
            mono = AF.resample(torch.from_numpy(wave), 16000, sr).numpy()
            path = root / "utt2_22k_stereo.wav"
            sf.write(path, np.stack([mono, 0.6 * mono], axis=1), sr)
        elif i == 1:
            path = root / "utt1.flac"
            sf.write(path, wave, 16000)
        else:
            path = root / f"utt{i}.wav"
            sf.write(path, wave, 16000)
        files.append(path)
    data = root / "data"
    data.mkdir()
    for f in toy.st_dir.iterdir():
        if f.is_file() and f.suffix in (".yaml", ".txt", ".model"):
            shutil.copy(f, data / f.name)
    lines = ["id\taudio\tn_frames\ttgt_text"]
    for i, f in enumerate(files):
        n = len(read_audio(str(f)))
        lines.append(f"utt{i}\t{f}\t{n}\tx")
    (data / "files.tsv").write_text("\n".join(lines) + "\n")
    return data, files


def generate(data: Path, checkpoint: Path) -> list[tuple[str, float]]:
    """fairseq-generate's detokenized hypotheses (D- lines) and their scores for the four files, in file order."""
    got = detok_hypotheses(output(fairseq("generate", [
        str(data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
        "--config-yaml", "config.yaml", "--gen-subset", "files", "--path", str(checkpoint),
        "--max-tokens", "400000", *GEN, "--cpu"])))
    assert sorted(got) == [0, 1, 2, 3]
    return [got[i] for i in range(4)]


def translate(checkpoint: Path, inputs: list, *extra: str, check: bool = True):  # noqa: ANN201
    return run_tool([sys.executable, "-m", "cress_bitnet.translate", str(checkpoint), *map(str, inputs),
                     *GEN, *extra], check=check)


@pytest.fixture(scope="module")
def exported(svcd_decoder_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    paths = {"unpacked": svcd_decoder_checkpoint}
    for fmt in ("pt", "safetensors"):
        paths[fmt] = out / f"packed.{fmt}"
        run_tool([sys.executable, "-m", "cress_bitnet.export", str(svcd_decoder_checkpoint), str(paths[fmt]),
                  "--format", fmt])
    return paths


@pytest.fixture(scope="module")
def generated(audio_dir: tuple[Path, list[Path]], svcd_decoder_checkpoint: Path) -> list[tuple[str, float]]:
    return generate(audio_dir[0], svcd_decoder_checkpoint)


@pytest.fixture(scope="module")
def reference(generated: list[tuple[str, float]]) -> list[str]:
    """fairseq-generate's translations of the four files by the trained (unpacked) checkpoint."""
    return [text for text, _ in generated]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unpacked", "pt", "safetensors"])
def test_translate_matches_fairseq_generate(kind: str, exported: dict[str, Path], audio_dir: tuple[Path, list[Path]],
                                            generated: list[tuple[str, float]], reference: list[str]) -> None:
    data, files = audio_dir
    ckpt = exported[kind]
    # fairseq-generate reads the packed files too (.safetensors through the plugin's loader), with the same text
    gen = generated if kind == "unpacked" else generate(data, ckpt)
    assert [text for text, _ in gen] == reference
    proc = translate(ckpt, files, "--format", "jsonl")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert [r["translation"] for r in rows] == reference
    assert all(r["translation"] for r in rows)
    assert [r["score"] for r in rows] == pytest.approx([score for _, score in gen], abs=2e-4)
    assert len({r["score"] for r in rows}) == 4  # the scores tell the utterances apart
    for r, f in zip(rows, files):
        info = sf.info(f)
        assert r["audio_seconds"] == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        assert r["compute_seconds"] > 0 and r["rtf"] == pytest.approx(r["compute_seconds"] / r["audio_seconds"],
                                                                      rel=1e-2)
    if kind != "unpacked":
        return
    # plain text, a folder as input (sorted), one file per batch: same translations
    text = translate(ckpt, [files[0].parent], "--batch-size", "1", "--format", "text", "--threads", "1").stdout
    by_name = dict(zip(sorted(f.name for f in files), text.splitlines()))
    assert [by_name[f.name] for f in files] == reference


@pytest.mark.slow
def test_unreadable_files_are_named_and_the_rest_translated(exported: dict[str, Path],
                                                            audio_dir: tuple[Path, list[Path]], reference: list[str],
                                                            tmp_path: Path) -> None:
    _, files = audio_dir
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00garbage" * 10)
    missing = tmp_path / "missing.ogg"
    # 3 batches of 2: the progress bar shows (on stderr, counting files); --device cpu and --threads are taken
    proc = translate(exported["pt"], [files[0], broken, *files[1:], missing], "--batch-size", "2", "--device", "cpu",
                     "--threads", "2", check=False)
    assert proc.returncode == 1
    assert "2 of 6 files could not be translated" in proc.stderr
    assert str(broken) in proc.stderr and str(missing) in proc.stderr
    assert proc.stdout.split("\n")[:6] == [reference[0], "", *reference[1:], ""]
    assert re.search(r"100%\|.*\| 6/6 \[", proc.stderr), proc.stderr[-2000:]
    quiet = translate(exported["pt"], files, "--batch-size", "2", "--no-progress")
    assert quiet.stdout.splitlines() == reference and "4/4 [" not in quiet.stderr


def test_cpu_and_another_device_contradict(tmp_path: Path) -> None:
    proc = translate(tmp_path / "none.pt", [tmp_path], "--cpu", "--device", "cuda:0", check=False)
    assert proc.returncode == 2 and "--cpu contradicts --device cuda:0" in proc.stderr


@pytest.mark.slow
def test_checkpoint_without_stored_data_config_needs_flags(toy: ToyData, svcd_decoder_checkpoint: Path,
                                                           audio_dir: tuple[Path, list[Path]], reference: list[str],
                                                           tmp_path: Path) -> None:
    state = torch.load(svcd_decoder_checkpoint, weights_only=True)
    assert {CONFIG_KEY, DICTIONARY_KEY, SPM_KEY} <= set(state["task_state"])  # stored at training time
    state["task_state"] = {}
    old = tmp_path / "old.pt"
    torch.save(state, old)
    _, files = audio_dir
    proc = translate(old, files[:1], check=False)
    assert proc.returncode == 2
    assert "stores no data config" in proc.stderr
    assert all(flag in proc.stderr for flag in ("--data-config", "--vocab", "--spm-model"))
    proc = translate(old, files, "--data-config", str(toy.st_dir / "config.yaml"))
    assert proc.stdout.splitlines() == reference


@pytest.mark.slow
def test_safetensors_loads_without_pickle(exported: dict[str, Path], audio_dir: tuple[Path, list[Path]],
                                          reference: list[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cress_bitnet import translate as translate_mod

    def no_pickle(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("torch.load called while reading a safetensors checkpoint")

    from safetensors import safe_open

    packed_pt = torch.load(exported["pt"], weights_only=True)["model"]  # the same export as a torch checkpoint
    first: dict[int, str] = {}
    tied = {}
    for k, v in packed_pt.items():
        if first.setdefault(v.data_ptr(), k) != k:
            tied[k] = first[v.data_ptr()]
    assert tied  # the toy model shares its embedding between the text encoder and the decoder
    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(torch.serialization, "load", no_pickle)
    model = load_state(exported["safetensors"])["model"]
    assert set(model) == set(packed_pt)
    for k, v in packed_pt.items():
        assert model[k].dtype == v.dtype and torch.equal(model[k], v), k
    with safe_open(str(exported["safetensors"]), framework="pt") as f:
        stored = set(f.keys())  # noqa: SIM118
        meta = f.metadata()
    for alias, key in tied.items():  # stored once, tied again after loading
        assert "model." + key in stored and "model." + alias not in stored
        assert model[alias].data_ptr() == model[key].data_ptr()
    assert json.loads(meta["quant_record"])["packed"] is True
    assert json.loads(meta["model_args"])["arch"] == "quant_transformer"
    out = tmp_path / "out.txt"
    _, files = audio_dir
    assert translate_mod.main([str(exported["safetensors"]), *map(str, files), *GEN, "-o", str(out)]) == 0
    assert out.read_text().splitlines() == reference
