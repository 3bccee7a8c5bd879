"""Issue 14 items 4 and 7 end to end: evaluation never drops utterances silently, --update-mix-data works, and inputs
that are accepted (BOM/CRLF manifests, 24-bit and float wavs) are read with the right values."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TGT, ToyData, fairseq, generate_args, output
from task_helpers import build_task, copy_data, snapshot

from cress_bitnet.data.manifest import read_manifest


@pytest.mark.slow
def test_generate_refuses_to_drop_too_long_utterances(toy: ToyData, fp_checkpoint: Path, tmp_path: Path) -> None:
    """fairseq-generate with utterances over --max-audio-positions: an error naming them, or (opt-in) a counted skip."""
    lengths = sorted(r.n_frames for r in read_manifest(toy.st_dir / "tst-COMMON.tsv"))
    limit = (lengths[2] + lengths[3]) // 2  # the 3 longest of 6 are over the limit
    before = snapshot(toy.st_dir)
    failed = fairseq("generate", generate_args(toy, fp_checkpoint, "--max-audio-positions", str(limit)), check=False)
    assert failed.returncode != 0
    assert re.search(rf"3 of 6 examples are longer than the limits \({limit}, 512, 512\).*tst-COMMON\.tsv:\d+ \(id "
                     r"ted_\S+, .*--skip-invalid-size-inputs-valid-test", output(failed), re.S)
    assert "BLEU" not in output(failed) and not re.search(r"^H-", output(failed), re.M)
    skipped = output(fairseq("generate", generate_args(toy, fp_checkpoint, "--max-audio-positions", str(limit),
                                                       "--skip-invalid-size-inputs-valid-test")))
    assert re.search(r"3 of 6 examples are longer than .* are skipped \(--skip-invalid-size-inputs-valid-test\)",
                     skipped)
    assert len(re.findall(r"^H-\d+\t", skipped, flags=re.M)) == 3
    assert snapshot(toy.st_dir) == before


def _batch_modes(toy: ToyData, *extra: str) -> list[str]:
    task, _ = build_task(toy.st_dir, "--hubert-model-path", str(toy.hubert), "--ext-mt-training", "--text-data",
                         str(toy.mt_bin), "--tgt-lang", TGT, "--max-tokens-text", "60", "--update-freq", "2",
                         "--max-tokens", "150000", *extra)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=150000, seed=1, epoch=1)
    return [batch["net_input"]["mode"] for batch in itr.next_epoch_itr(shuffle=True)]


def test_update_mix_data_lets_one_update_mix_modalities(toy: ToyData) -> None:
    """Default: the --update-freq 2 batches of an update share one modality; --update-mix-data lets them differ."""
    grouped = _batch_modes(toy)
    assert {"st", "ext_mt"} <= set(grouped) and len(grouped) >= 8
    assert all(grouped[i] == grouped[i + 1] for i in range(0, len(grouped) - 1, 2))
    mixed = _batch_modes(toy, "--update-mix-data")
    # grouping keeps whole groups of 2 per modality, so it may leave out one batch of each; mixing keeps them all
    assert len(grouped) <= len(mixed) <= len(grouped) + 2
    assert any(mixed[i] != mixed[i + 1] for i in range(0, len(mixed) - 1, 2))


def _rewrite(path: Path, *, bom: bool, crlf: bool) -> None:
    text = path.read_text(encoding="utf-8")
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


@pytest.mark.parametrize("bom, crlf", [(True, False), (False, True), (True, True)])
def test_bom_and_crlf_manifests_read_like_the_plain_one(toy: ToyData, tmp_path: Path, bom: bool, crlf: bool) -> None:
    """Decision: a UTF-8 BOM and CRLF line ends (a manifest saved on Windows) are accepted, with identical fields."""
    data = copy_data(toy, tmp_path)
    plain = read_manifest(data / "dev.tsv")
    _rewrite(data / "dev.tsv", bom=bom, crlf=crlf)
    assert read_manifest(data / "dev.tsv") == plain
    task, _ = build_task(data, "--hubert-model-path", str(toy.hubert))
    task.load_dataset("dev")
    ds = task.dataset("dev")
    assert [r.id for r in ds.rows] == [r.id for r in plain]
    assert all(not r.tgt_text.endswith("\r") and not r.speaker.endswith("\r") for r in ds.rows)


@pytest.mark.parametrize("subtype, tol", [("PCM_24", 2.0**-23), ("FLOAT", 0.0), ("DOUBLE", 0.0)])
def test_24_bit_and_float_wavs_load_with_their_values(toy: ToyData, tmp_path: Path, subtype: str, tol: float) -> None:
    data = copy_data(toy, tmp_path)
    x = np.random.default_rng(1).uniform(-0.9, 0.9, 16000)
    if subtype != "DOUBLE":
        x = x.astype(np.float32)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, x, 16000, subtype=subtype)
    rows = (data / "dev.tsv").read_text(encoding="utf-8").splitlines()
    fields = rows[1].split("\t")
    fields[1], fields[2] = str(path), "16000"
    rows[1] = "\t".join(fields)
    (data / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    task, _ = build_task(data, "--hubert-model-path", str(toy.hubert))
    task.load_dataset("dev")
    ds = task.dataset("dev")
    audio = ds[0]["audio"]
    assert audio.dtype == torch.float32 and audio.shape == (16000,)
    assert float((audio.double() - torch.from_numpy(x.astype(np.float64))).abs().max()) <= tol + 2.0**-24
