"""Bad inputs (issues 2 and 14): each ends in one clear error naming the file, line or flag, not a fairseq traceback,
and leaves every file as it was."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import ToyData
from task_helpers import build_task, copy_data, snapshot


def edit_manifest(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


# ---- the bad-input table -------------------------------------------------------------------------------------------
# Each case prepares a copy of the toy data in tmp (``Bad.prepare(data, tmp, toy)`` edits it and returns extra flags),
# then runs one step: "setup" (task setup), "dev"/"train" (load that split), "item" (read dev's first utterance),
# "batches" (dev's validation batches), "model" (build the model). The step must raise an error matching
# ``pattern`` (which names the file, line or flag), and leave every file under tmp untouched.


@dataclass
class Bad:
    prepare: Callable[[Path, Path, ToyData], list[str]]
    step: str
    pattern: str


def _rows(data: Path, split: str = "dev") -> list[list[str]]:
    return [line.split("\t") for line in (data / f"{split}.tsv").read_text(encoding="utf-8").splitlines()]


def _put_rows(data: Path, rows: list[list[str]], split: str = "dev") -> None:
    (data / f"{split}.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")


def manifest(edit: Callable[[list[list[str]]], object], *flags: str,
             split: str = "dev") -> Callable[[Path, Path, ToyData], list[str]]:
    """Edit the rows of ``split``.tsv (row 0 is the header; row 1 is line 2) in place."""

    def prepare(data: Path, tmp: Path, toy: ToyData) -> list[str]:
        rows = _rows(data, split)
        edit(rows)
        _put_rows(data, rows, split)
        return list(flags)

    return prepare


def _bad_utf8(data: Path, tmp: Path, toy: ToyData) -> list[str]:
    path = data / "dev.tsv"
    path.write_bytes(path.read_bytes().replace(b"Die", b"D\xffe", 1))
    return []


def _not_yaml(data: Path, tmp: Path, toy: ToyData) -> list[str]:
    (data / "config.yaml").write_text("vocab_filename: [spm\n", encoding="utf-8")
    return []


def row_audio(make: Callable[[Path], tuple[str, int]]) -> Callable[[Path, Path, ToyData], list[str]]:
    """Point dev.tsv line 2 at audio written by ``make(folder) -> (audio field, n_frames)``."""

    def prepare(data: Path, tmp: Path, toy: ToyData) -> list[str]:
        folder = tmp / "audio"
        folder.mkdir(exist_ok=True)
        audio, n_frames = make(folder)
        rows = _rows(data)
        rows[1][1], rows[1][2] = audio, str(n_frames)
        _put_rows(data, rows)
        return []

    return prepare


def wav(name: str, x: np.ndarray, subtype: str = "PCM_16", sr: int = 16000) -> Callable[[Path], tuple[str, int]]:
    def make(folder: Path) -> tuple[str, int]:
        sf.write(folder / name, x, sr, subtype=subtype)
        return str(folder / name), len(x)

    return make


def raw_file(name: str, data: Callable[[], bytes], n_frames: int = 16000) -> Callable[[Path], tuple[str, int]]:
    def make(folder: Path) -> tuple[str, int]:
        (folder / name).write_bytes(data())
        return str(folder / name), n_frames

    return make


def _wav_bytes(n: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(n, 0.25, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def zip_member(data: bytes, n_frames: int = 16000, extra_len: int = 0) -> Callable[[Path], tuple[str, int]]:
    def make(folder: Path) -> tuple[str, int]:
        zpath = folder / "a.zip"
        with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("u.wav", data)
        with zipfile.ZipFile(zpath) as z:
            info = z.infolist()[0]
        return f"{zpath}:{info.header_offset + 30 + len(info.filename)}:{info.file_size + extra_len}", n_frames

    return make


def config(edit: Callable[[dict], object], *flags: str) -> Callable[[Path, Path, ToyData], list[str]]:
    def prepare(data: Path, tmp: Path, toy: ToyData) -> list[str]:
        cfg = yaml.safe_load((data / "config.yaml").read_text(encoding="utf-8"))
        edit(cfg)
        (data / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return list(flags)

    return prepare


def flags(*extra: str) -> Callable[[Path, Path, ToyData], list[str]]:
    return lambda data, tmp, toy: list(extra)


def _other_spm(data: Path, tmp: Path, toy: ToyData) -> list[str]:
    """A SentencePiece model trained on other text, next to the original dictionary."""
    import sentencepiece as spm

    text = tmp / "other.txt"
    text.write_text("\n".join(f"zzq xylophon {i} quorx wibbel" for i in range(50)) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.Train(input=str(text), model_prefix=str(data / "other"), vocab_size=30,
                                   model_type="unigram", bos_id=0, pad_id=1, eos_id=2, unk_id=3)
    text.unlink()
    cfg = yaml.safe_load((data / "config.yaml").read_text(encoding="utf-8"))
    cfg["bpe_tokenizer"]["sentencepiece_model"] = "other.model"
    (data / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return []


def _drop(seq: dict, key: str) -> None:
    del seq[key]


def _past_end(audio: str) -> str:
    path, offset, n = audio.rsplit(":", 2)
    return f"{path}:{int(offset) + 10**7}:{n}"


def _set(row: int, col: int, value: Callable[[str], str]) -> Callable[[list[list[str]]], None]:
    def edit(rows: list[list[str]]) -> None:
        rows[row][col] = value(rows[row][col])

    return edit


def _drop_column(name: str) -> Callable[[list[list[str]]], None]:
    def edit(rows: list[list[str]]) -> None:
        col = rows[0].index(name)
        for r in rows:
            del r[col]

    return edit


ID, AUDIO, NF, SRC, TGT = 0, 1, 2, 3, 4
CTC = ("--criterion", "speech_and_text_translation", "--ctc-weight", "0.3")
MTF = ("--criterion", "speech_and_text_translation", "--mt-finetune")
NOISE = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)

BAD_INPUTS: dict[str, Bad] = {
    # manifest text
    "missing column": Bad(manifest(_drop_column("tgt_text")), "dev", r"dev\.tsv:1: header lacks .*tgt_text"),
    "empty manifest": Bad(manifest(lambda rows: rows.__delitem__(slice(1, None))), "dev",
                          r"dev\.tsv: empty manifest"),
    "tab inside a text field": Bad(manifest(_set(2, TGT, lambda t: t.replace(" ", "\t", 1))), "dev",
                                   r"dev\.tsv:3: expected 6 tab-separated fields .* found 7 \(a tab inside a text"),
    "n_frames not an integer": Bad(manifest(_set(1, NF, lambda _: "12.5")), "dev",
                                   r"dev\.tsv:2 \(id \S+\): n_frames '12\.5' is not a positive integer"),
    "duplicate id": Bad(manifest(_set(2, ID, lambda _: "ted_5000_0")), "dev",
                        r"dev\.tsv:3: duplicate id 'ted_5000_0' \(first on line 2\)"),
    "empty tgt_text": Bad(manifest(_set(3, TGT, lambda _: " ")), "dev", r"dev\.tsv:4 \(id \S+\): empty tgt_text"),
    "invalid UTF-8": Bad(_bad_utf8, "dev", r"dev\.tsv:\d+: invalid UTF-8"),
    "src_text column missing with --ctc-weight": Bad(
        manifest(_drop_column("src_text"), *CTC, split="train"), "train",
        r"train\.tsv:1: header lacks column src_text, which --ctc-weight 0\.3 needs"),
    "src_text column missing with --mt-finetune": Bad(
        manifest(_drop_column("src_text"), *MTF, split="train"), "train",
        r"train\.tsv:1: header lacks column src_text, which --mt-finetune needs"),
    "empty src_text with --ctc-weight and --mt-finetune": Bad(
        manifest(_set(4, SRC, lambda _: ""), *CTC, "--mt-finetune", split="train"), "train",
        r"train\.tsv:5 \(id \S+\): empty src_text, which --ctc-weight 0\.3 and --mt-finetune needs"),
    # the audio field
    "audio file missing": Bad(manifest(_set(2, AUDIO, lambda a: a.replace(".wav", "_gone.wav"))), "dev",
                              r"dev\.tsv:3 \(id \S+\): audio file not found: .*_gone\.wav"),
    "segment past end": Bad(manifest(_set(1, AUDIO, _past_end)), "dev",
                            r"dev\.tsv:2 \(id \S+\): segment .* lies past the end of .*\.wav"),
    "segment n_frames wrong": Bad(manifest(_set(1, NF, lambda n: str(int(n) + 1))), "dev",
                                  r"dev\.tsv:2 \(id \S+\): n_frames \d+ does not match the length \d+ of segment"),
    "unsupported extension": Bad(manifest(_set(1, AUDIO, lambda _: "talk.mp3")), "dev",
                                 r"dev\.tsv:2 \(id \S+\): audio file .*talk\.mp3 has an unsupported extension"),
    "malformed audio field": Bad(manifest(_set(1, AUDIO, lambda a: a.rsplit(":", 1)[0])), "dev",
                                 r"dev\.tsv:2 \(id \S+\): audio field .* is not 'file', 'file:offset:n_samples'"),
    "negative offset": Bad(manifest(_set(1, AUDIO, lambda a: a.replace(":", ":-", 1))), "dev",
                           r"dev\.tsv:2 \(id \S+\): audio field .*: negative offset"),
    "corrupt wav": Bad(row_audio(raw_file("corrupt.wav", lambda: b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunkjunk")), "dev",
                       r"dev\.tsv:2 \(id \S+\): cannot read audio file .*corrupt\.wav"),
    "truncated wav": Bad(row_audio(raw_file("cut.wav", lambda: _wav_bytes(16000)[:16000])), "dev",
                         r"dev\.tsv:2 \(id \S+\): n_frames 16000 does not match the length 79\d\d of .*cut\.wav"),
    "wav with 0 samples": Bad(row_audio(lambda f: (wav("empty.wav", np.zeros(0, np.float32))(f)[0], 16000)), "dev",
                              r"dev\.tsv:2 \(id \S+\): .*empty\.wav has no samples"),
    "whole-file n_frames wrong": Bad(row_audio(lambda f: (wav("w.wav", NOISE)(f)[0], 15000)), "dev",
                                     r"dev\.tsv:2 \(id \S+\): n_frames 15000 does not match the length 16000 of "
                                     r".*w\.wav"),
    "resampled n_frames wrong": Bad(row_audio(lambda f: (wav("r8k.wav", NOISE[:8000], sr=8000)(f)[0], 8000)), "dev",
                                    r"n_frames 8000 does not match the length 16000 \(8000 samples at 8000 Hz "
                                    r"resampled to 16000 Hz\) of .*r8k\.wav"),
    "NaN samples": Bad(row_audio(wav("nan.wav", np.where(np.arange(16000) == 5, np.nan, NOISE), "FLOAT")), "item",
                       r"dev\.tsv:2 \(id \S+\): audio .*nan\.wav holds 1 NaN or infinite samples"),
    "inf samples": Bad(row_audio(wav("inf.wav", np.where(np.arange(16000) % 4000 == 0, np.inf, NOISE), "FLOAT")),
                       "item", r"dev\.tsv:2 \(id \S+\): audio .*inf\.wav holds 4 NaN or infinite samples"),
    "zip entry past the end": Bad(row_audio(zip_member(_wav_bytes(), extra_len=100)), "dev",
                                  r"dev\.tsv:2 \(id \S+\): zip entry \d+\+\d+ bytes lies past the end of .*a\.zip"),
    "zip entry not audio": Bad(row_audio(zip_member(b"this is not audio at all" * 10)), "dev",
                               r"dev\.tsv:2 \(id \S+\): cannot read zip entry \d+:\d+ of .*a\.zip"),
    "zip entry n_frames wrong": Bad(row_audio(zip_member(_wav_bytes(16000), n_frames=16001)), "dev",
                                    r"dev\.tsv:2 \(id \S+\): n_frames 16001 does not match the length 16000 of "
                                    r"zip entry"),
    # the data config
    "missing data config": Bad(flags("--config-yaml", "nope.yaml"), "setup",
                               r"data config not found: .*nope\.yaml.*--config-yaml"),
    "config not YAML": Bad(_not_yaml, "setup",
                           r"config\.yaml: not valid YAML"),
    "missing config key": Bad(config(lambda c: _drop(c, "vocab_filename")), "setup",
                              r"config\.yaml: missing key 'vocab_filename'"),
    "wrong vocab_filename": Bad(config(lambda c: c.update(vocab_filename="spm_nope.txt")), "setup",
                                r"config\.yaml: vocab_filename not found: .*spm_nope\.txt"),
    "spm model missing": Bad(config(lambda c: c["bpe_tokenizer"].update(sentencepiece_model="gone.model")), "setup",
                             r"config\.yaml: bpe_tokenizer\.sentencepiece_model not found: .*gone\.model"),
    "spm model does not match the dictionary": Bad(
        _other_spm, "setup", r"config\.yaml: the SentencePiece model .*other\.model does not match vocab_filename "
                             r".*spm_unigram\d+\.txt: \d+ of its \d+ pieces are not in the dictionary"),
    "unknown config key": Bad(config(lambda c: c.update(vocab_file="x.txt")), "setup",
                              r"config\.yaml: unsupported key\(s\) vocab_file \(cress_bitnet reads only: vocab_"),
    "feature-only config key": Bad(config(lambda c: c.update(transforms={"*": ["utterance_cmvn"]})), "setup",
                                   r"config\.yaml: transforms: filterbank-feature setting"),
    "use_sample_rate not 16000": Bad(config(lambda c: c.update(use_sample_rate=8000)), "setup",
                                     r"config\.yaml: use_sample_rate 8000: HuBERT takes 16000 Hz"),
    "input_channels 2": Bad(config(lambda c: c.update(input_channels=2)), "setup",
                            r"config\.yaml: input_channels 2: the model takes one channel"),
    "use_audio_input false": Bad(config(lambda c: c.update(use_audio_input=False)), "setup",
                                 r"config\.yaml: use_audio_input must be true"),
    "standardize_audio not a boolean": Bad(config(lambda c: c.update(standardize_audio="maybe")), "setup",
                                           r"config\.yaml: 'standardize_audio' must be true or false, got 'maybe'"),
    "lang tag without --tgt-lang or tgt_lang column": Bad(
        config(lambda c: c.update(prepend_tgt_lang_tag=True)), "dev",
        r"dev\.tsv:2 \(id \S+\): no target language .*add a tgt_lang column or pass --tgt-lang"),
    "lang tag not in the dictionary": Bad(config(lambda c: c.update(prepend_tgt_lang_tag=True), "--tgt-lang", "xx"),
                                          "setup", r"spm_unigram200\.txt: has no language tag <lang:xx>"),
    "sampling_alpha not positive": Bad(config(lambda c: c.update(sampling_alpha=0)), "setup",
                                       r"config\.yaml: 'sampling_alpha' must be a positive number, got 0"),
    # flags
    "--eval-bleu-bpe": Bad(flags("--eval-bleu-bpe", "sentencepiece"), "setup",
                           r"--eval-bleu-bpe sentencepiece: not supported .*data config's bpe_tokenizer"),
    "--eval-bleu-bpe-path": Bad(flags("--eval-bleu-bpe-path", "spm.model"), "setup",
                                r"--eval-bleu-bpe-path spm\.model: not supported"),
    "--load-pretrained-encoder-from": Bad(flags("--load-pretrained-encoder-from", "asr.pt"), "model",
                                          r"--load-pretrained-encoder-from asr\.pt: not supported"),
    "utterance longer than --max-audio-positions at validation": Bad(
        flags("--max-audio-positions", "40000"), "batches",
        r"\d of 6 examples are longer than the limits \(40000, 512, 512\).*: .*dev\.tsv:\d+ \(id ted_\S+, "
        r"\(\d+, \d+, \d+\)\).*--skip-invalid-size-inputs-valid-test"),
}


def run_step(step: str, data: Path, toy: ToyData, extra: list[str]) -> None:
    task, args = build_task(data, "--hubert-model-path", str(toy.hubert), *extra)
    if step == "dev" or step == "train":
        task.load_dataset(step)
    elif step == "item":
        task.load_dataset("dev")
        task.dataset("dev")[0]
    elif step == "batches":
        task.load_dataset("dev")
        task.get_batch_iterator(task.dataset("dev"), max_tokens=400000)
    elif step == "model":
        task.build_model(args)
    elif step != "setup":
        raise AssertionError(step)


def test_the_table_has_30_kinds() -> None:
    assert len(BAD_INPUTS) >= 30


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case: str, toy: ToyData, tmp_path: Path) -> None:
    bad = BAD_INPUTS[case]
    data = copy_data(toy, tmp_path)
    extra = bad.prepare(data, tmp_path, toy)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=re.compile(bad.pattern, re.S)) as err:
        run_step(bad.step, data, toy, extra)
    if bad.step in ("dev", "train", "item") and "tsv" in bad.pattern:
        assert str(data / f"{bad.step if bad.step == 'train' else 'dev'}.tsv") in str(err.value)
    assert snapshot(tmp_path) == before, "a failed run wrote, changed or removed files"


def _truncate(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


CHECKPOINT_CASES = {
    "missing hubert": (lambda toy, tmp: ["--hubert-model-path", str(tmp / "nope.pt")],
                       r"not found: .*nope\.pt \(given by --hubert-model-path\)"),
    "missing mt": (lambda toy, tmp: ["--hubert-model-path", str(toy.hubert),
                                     "--load-pretrained-mt-encoder-decoder-from", str(tmp / "nope_mt.pt")],
                   r"not found: .*nope_mt\.pt \(given by --load-pretrained-mt-encoder-decoder-from\)"),
    "truncated mt": (lambda toy, tmp: ["--hubert-model-path", str(toy.hubert),
                                       "--load-pretrained-mt-encoder-decoder-from",
                                       str(_truncate(toy.mt_checkpoint, tmp / "half.pt"))],
                     r"half\.pt.*truncated"),
    "truncated hubert": (lambda toy, tmp: ["--hubert-model-path", str(_truncate(toy.hubert, tmp / "h.pt"))],
                         r"h\.pt.*truncated"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint(case: str, toy: ToyData, tmp_path: Path) -> None:
    flags, pattern = CHECKPOINT_CASES[case]
    task, args = build_task(toy.st_dir, *flags(toy, tmp_path))
    with pytest.raises(RuntimeError, match=pattern):
        task.build_model(args)


def test_dictionary_mismatch_with_mt_checkpoint(toy: ToyData, tmp_path: Path) -> None:
    data = copy_data(toy, tmp_path)
    vocab = next(data.glob("spm_unigram*.txt"))
    vocab.write_text(vocab.read_text(encoding="utf-8") + "extra_piece_1 1\nextra_piece_2 1\n", encoding="utf-8")
    task, args = build_task(data, "--hubert-model-path", str(toy.hubert),
                            "--load-pretrained-mt-encoder-decoder-from", str(toy.mt_checkpoint))
    with pytest.raises(RuntimeError, match=r"checkpoint_last\.pt .*embed_tokens.weight has \d+ rows but the "
                                           r"dictionary has \d+ entries"):
        task.build_model(args)


def test_mt_text_binarized_with_another_dictionary(toy: ToyData, tmp_path: Path) -> None:
    data = copy_data(toy, tmp_path)
    vocab = next(data.glob("spm_unigram*.txt"))
    vocab.write_text(vocab.read_text(encoding="utf-8") + "extra_piece 1\n", encoding="utf-8")
    task, _ = build_task(data, "--ext-mt-training", "--text-data", str(toy.mt_bin), "--tgt-lang", "de")
    with pytest.raises(ValueError, match=r"dict\.en\.txt: \d+ entries, but the speech data's vocabulary has \d+"):
        task.load_dataset("train")


def test_max_tokens_smaller_than_an_utterance(toy: ToyData) -> None:
    task, _ = build_task(toy.st_dir, "--hubert-model-path", str(toy.hubert))
    task.load_dataset("dev")
    with pytest.raises(ValueError, match=r"--max-tokens 1000 is smaller than the longest example \(\d+ audio samples"):
        task.get_batch_iterator(task.dataset("dev"), max_tokens=1000)
