"""Toy MuST-C generator + prep_mustc_data + prep_mt_data end to end (two target languages), bad inputs, determinism."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from cress_bitnet.data.audio import SAMPLE_RATE, AudioError, check_audio_refs, read_audio
from cress_bitnet.data.manifest import read_manifest
from data_prep import make_toy_mustc as toy
from data_prep import prep_mt_data as prep_mt
from data_prep import prep_mustc_data as prep
from data_prep.make_tiny_checkpoints import make_deltalm_vocab
from data_prep.toy_corpus import grammar, lexicon

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--train", "12", "--dev", "4", "--test", "4"]


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "mustc"
    assert toy.main(["--out", str(root), "--tgt-langs", "de,fr", "--seed", "1", *SMALL]) == 0
    return root


@pytest.fixture(scope="module")
def prepared(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for lang in ("de", "fr"):
        d = tmp_path_factory.mktemp("prep") / f"en-{lang}"
        assert (
            prep.main(["--data-root", str(corpus), "--tgt-lang", lang, "--out-dir", str(d), "--vocab-size", "500"]) == 0
        )
        out[lang] = d
    return out


def test_toy_layout_and_grammar(corpus: Path) -> None:
    for lang in ("de", "fr"):
        for split, n in (("train", 12), ("dev", 4), ("tst-COMMON", 4)):
            txt = corpus / f"en-{lang}" / "data" / split / "txt"
            items = yaml.safe_load((txt / f"{split}.yaml").read_text())
            assert len(items) == n
            assert set(items[0]) == {"duration", "offset", "rW", "uW", "speaker_id", "wav"}
            pattern = (
                r"- \{duration: \d+\.\d{6}, offset: \d+\.\d{6}, rW: \d+, uW: 0, "
                r"speaker_id: spk\.\d+, wav: ted_\d+\.wav\}"
            )
            assert re.fullmatch(pattern, (txt / f"{split}.yaml").read_text().splitlines()[0])
            for it in items:
                assert (txt.parent / "wav" / it["wav"]).is_file() and it["speaker_id"] == f"spk.{it['wav'][4:-4]}"
            en = (txt / f"{split}.en").read_text().splitlines()
            assert len(en) == n and len((txt / f"{split}.{lang}").read_text().splitlines()) == n
            assert [it["rW"] for it in items] == [len(s.split()) for s in en]
    # the same English talks in both pairs, audio byte-identical
    assert _tree_hash(corpus / "en-de/data/train/wav") == _tree_hash(corpus / "en-fr/data/train/wav")
    assert (corpus / "en-de/data/dev/txt/dev.en").read_bytes() == (corpus / "en-fr/data/dev/txt/dev.en").read_bytes()


def test_grammar_agreement_samples() -> None:
    sents = grammar.generate_sentences(7, 400)
    assert len({s[0] for s in sents}) == 400
    by_en = {s[0]: s for s in sents}
    # construct specific phrases through the grammar functions
    ball = lexicon.THINGS[0]  # Ball m / balle f
    red, small = lexicon.COLOURS[0], lexicon.SIZES[0]
    np_ = grammar.NP(ball, "indef", 1, small, red)
    assert grammar.en_np(np_) == "a small red ball"
    assert grammar.de_np(np_, "acc") == "einen kleinen roten Ball"
    assert grammar.de_np(np_, "nom") == "ein kleiner roter Ball"
    assert grammar.fr_np(np_) == "une petite balle rouge"
    tree = lexicon.PLACES[7][0]
    old = lexicon.SIZES[2]
    assert grammar.fr_np(grammar.NP(tree, "def", 1, old)) == "le vieil arbre"
    assert grammar.fr_np(grammar.NP(tree, "def", 1), de_contract=True) == "de l'arbre"
    assert grammar.de_np(grammar.NP(lexicon.ANIMATES[9], "def", 1), "acc") == "den Jungen"
    assert grammar.de_np(grammar.NP(ball, "num", 3, None, red), "acc") == "drei rote Bälle"
    assert grammar.en_np(grammar.NP(lexicon.THINGS[1], "indef", 1)) == "an apple"
    assert all(s[1][0].isupper() and s[2].endswith(".") for s in by_en.values())


def test_manifests_match_yaml(corpus: Path, prepared: dict[str, Path]) -> None:
    for lang, out in prepared.items():
        for split in ("train", "dev", "tst-COMMON"):
            tsv = out / f"{split}.tsv"
            rows = read_manifest(tsv)
            txt = corpus / f"en-{lang}" / "data" / split / "txt"
            items = yaml.safe_load((txt / f"{split}.yaml").read_text())
            assert len(rows) == len(items)
            assert [r.src_text for r in rows] == (txt / f"{split}.en").read_text().splitlines()
            assert [r.tgt_text for r in rows] == (txt / f"{split}.{lang}").read_text().splitlines()
            check_audio_refs(rows, "", tsv)
            for r, it in zip(rows, items):
                path, off, n = r.audio.rsplit(":", 2)
                assert Path(path).is_absolute() and Path(path).name == it["wav"]
                assert abs(int(off) - it["offset"] * SAMPLE_RATE) <= 1
                wave = read_audio(r.audio)
                assert abs(wave.numel() - it["duration"] * SAMPLE_RATE) <= 1 and wave.numel() == r.n_frames
                assert float(wave.abs().max()) > 0.05  # speech, not silence
                assert r.speaker == it["speaker_id"] and re.fullmatch(r"ted_\d+_\d+", r.id)
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        assert cfg["vocab_filename"] == "spm_unigram500.txt" and cfg["use_audio_input"] is True
        assert cfg["bpe_tokenizer"] == {"bpe": "sentencepiece", "sentencepiece_model": "spm_unigram500.model"}
        assert cfg["audio_root"] == "" and cfg["standardize_audio"] is False and cfg["input_channels"] == 1
        assert cfg["prepend_tgt_lang_tag"] is False
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(out / "spm_unigram500.model"))
        assert [sp.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
        dict_lines = (out / "spm_unigram500.txt").read_text(encoding="utf-8").splitlines()
        assert len(dict_lines) == sp.get_piece_size() - 4 and all(ln.endswith(" 1") for ln in dict_lines)


def test_prep_rerun_skips_and_relative_audio_root(corpus: Path, prepared: dict[str, Path], tmp_path: Path) -> None:
    out = prepared["de"]
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.tsv")} | {out / "spm_unigram500.model": 0}
    before[out / "spm_unigram500.model"] = (out / "spm_unigram500.model").stat().st_mtime_ns
    assert (
        prep.main(["--data-root", str(corpus), "--tgt-lang", "de", "--out-dir", str(out), "--vocab-size", "500"]) == 0
    )
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    rel = tmp_path / "rel"
    prep.main(["--data-root", str(corpus / "en-de"), "--tgt-lang", "de", "--out-dir", str(rel), "--splits", "train,dev",
               "--vocab-size", "300", "--audio-root", str(corpus)])  # fmt: skip
    rows = read_manifest(rel / "dev.tsv")
    assert rows[0].audio.startswith("en-de/data/dev/wav/ted_")
    assert yaml.safe_load((rel / "config.yaml").read_text())["audio_root"] == str(corpus.resolve())
    assert read_audio(rows[0].audio, corpus).numel() == rows[0].n_frames


def test_prep_converts_non_16k_talks(corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    shutil.copytree(corpus / "en-de" / "data" / "dev", root / "en-de" / "data" / "dev")
    wav = next((root / "en-de" / "data" / "dev" / "wav").glob("*.wav"))
    x, sr = sf.read(wav)
    t = len(x) * 22050 // sr
    x22 = np.interp(np.arange(t) * sr / 22050, np.arange(len(x)), x)
    sf.write(wav, np.stack([x22, x22], axis=1), 22050, subtype="PCM_16")
    out = tmp_path / "out"
    with pytest.raises(prep.PrepError, match="train.tsv"):  # no train split: spm cannot be trained
        prep.main(["--data-root", str(root), "--tgt-lang", "de", "--out-dir", str(out), "--splits", "dev"])
    rows = read_manifest(out / "dev.tsv")
    assert all("/wav16k/dev/" in r.audio for r in rows)
    items = yaml.safe_load((root / "en-de/data/dev/txt/dev.yaml").read_text())
    for r, it in zip(rows, items):
        assert abs(read_audio(r.audio).numel() - it["duration"] * SAMPLE_RATE) <= 1


def test_prep_mt_binarizes_two_languages(prepared: dict[str, Path], tmp_path: Path) -> None:
    from fairseq.data import Dictionary, data_utils

    extra = tmp_path / "extra"
    toy.main(["--out", str(extra), "--tgt-langs", "de", "--seed", "2", "--train", "5", "--dev", "0", "--test", "0",
              "--pairs-only"])  # fmt: skip
    assert len((extra / "train.de").read_text().splitlines()) == 5
    for lang, out in prepared.items():
        bin_dir = tmp_path / f"bin-{lang}"
        argv = ["--data-dir", str(out), "--tgt-lang", lang, "--out", str(bin_dir)]
        if lang == "de":
            argv += ["--extra-train", str(extra / "train")]
        else:  # the DeltaLM path with an explicit model and dictionary
            argv += ["--deltalm", "--spm", str(out / "spm_unigram500.model"), "--dict", str(out / "spm_unigram500.txt")]
        assert prep_mt.main(argv) == 0
        d = Dictionary.load(str(out / "spm_unigram500.txt"))
        n_extra = 5 if lang == "de" else 0
        for split, fs, add in (("train", "train", n_extra), ("dev", "valid", 0), ("tst-COMMON", "test", 0)):
            rows = read_manifest(out / f"{split}.tsv")
            for side in ("en", lang):
                ds = data_utils.load_indexed_dataset(str(bin_dir / f"{fs}.en-{lang}.{side}"), d)
                assert ds is not None and len(ds) == len(rows) + add
            ds = data_utils.load_indexed_dataset(str(bin_dir / f"{fs}.en-{lang}.{lang}"), d)
            decoded = d.string(ds[0]).replace(" ", "").replace("\u2581", " ").strip()
            assert decoded == rows[0].tgt_text
            assert d.unk() not in ds[0].tolist()
        mtime = (bin_dir / f"train.en-{lang}.en.bin").stat().st_mtime_ns
        assert prep_mt.main(argv) == 0  # rerun skips
        assert (bin_dir / f"train.en-{lang}.en.bin").stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------- an existing spm model + dictionary


@pytest.fixture(scope="module")
def deltalm_vocab(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeltaLM-layout spm.model + dict.txt trained on the de pair's train text (XLM-R special ids, count-ranked)."""
    out = tmp_path_factory.mktemp("deltalm_vocab")
    txt = corpus / "en-de" / "data" / "train" / "txt"
    text = out / "text.txt"
    text.write_text((txt / "train.en").read_text() + (txt / "train.de").read_text())
    n = make_deltalm_vocab(out, text, vocab_size=120)
    assert n == len((out / "dict.txt").read_text().splitlines()) + 4
    return out


def _prep_with(corpus: Path, out: Path, spm_model: Path, vocab: Path) -> int:
    return prep.main(["--data-root", str(corpus), "--tgt-lang", "de", "--out-dir", str(out), "--spm-model",
                      str(spm_model), "--vocab", str(vocab)])


def test_prep_with_an_existing_spm_model_and_dictionary(corpus: Path, deltalm_vocab: Path, tmp_path: Path) -> None:
    import sentencepiece as spm
    from fairseq.data import Dictionary

    out = tmp_path / "en-de"
    assert _prep_with(corpus, out, deltalm_vocab / "spm.model", deltalm_vocab / "dict.txt") == 0
    assert not list(out.glob("spm_*")), "no SentencePiece model may be trained"
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["vocab_filename"] == str((deltalm_vocab / "dict.txt").resolve())
    assert cfg["bpe_tokenizer"] == {"bpe": "sentencepiece",
                                    "sentencepiece_model": str((deltalm_vocab / "spm.model").resolve())}
    # the config's files encode every text without <unk>, through the dictionary's own ids (fairseq's S2T pipeline)
    d = Dictionary.load(cfg["vocab_filename"])
    sp = spm.SentencePieceProcessor(model_file=str(deltalm_vocab / "spm.model"))
    assert sp.unk_id() == 0 and sp.pad_id() == -1  # XLM-R's layout, unlike our own models'
    rows = read_manifest(out / "train.tsv")
    ids = [d.encode_line(" ".join(sp.encode(r.tgt_text, out_type=str)), add_if_not_exist=False) for r in rows]
    assert all(d.unk() not in x.tolist() for x in ids)
    assert any(i != sp.piece_to_id(d[i]) for x in ids for i in x.tolist()[:-1]), "dict ids equal spm ids"
    decoded = d.string(ids[0]).replace(" ", "").replace("\u2581", " ").strip()
    assert decoded == rows[0].tgt_text


def test_prep_rejects_a_dictionary_missing_a_used_piece(corpus: Path, deltalm_vocab: Path, tmp_path: Path) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(deltalm_vocab / "spm.model"))
    first = read_manifest(tmp_path_prep(corpus, tmp_path) / "train.tsv")[0]
    piece = sp.encode(first.tgt_text, out_type=str)[0]
    lines = (deltalm_vocab / "dict.txt").read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "dict.txt"
    bad.write_text("".join(ln + "\n" for ln in lines if ln.rsplit(" ", 1)[0] != piece), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(prep.PrepError) as e:
        _prep_with(corpus, out, deltalm_vocab / "spm.model", bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad.resolve()}: ") and repr(piece) in msg and "are not in the dictionary" in msg
    assert not (out / "config.yaml").exists()


def tmp_path_prep(corpus: Path, tmp_path: Path) -> Path:
    """Manifests of the de pair (own spm), to find the texts the data uses."""
    out = tmp_path / "plain"
    assert prep.main(["--data-root", str(corpus), "--tgt-lang", "de", "--out-dir", str(out), "--vocab-size",
                      "100"]) == 0
    return out


@pytest.mark.parametrize(
    ("spm_content", "dict_content", "message"),
    [
        (b"not a model", None, "spm.model: not a SentencePiece model"),
        (None, "\u2581the 5\nno_count_here\n", "dict.txt:2: not a fairseq dictionary line"),
        (None, "", "dict.txt: empty dictionary"),
    ],
)
def test_prep_rejects_bad_vocab_files(corpus: Path, deltalm_vocab: Path, tmp_path: Path, spm_content: bytes | None,
                                      dict_content: str | None, message: str) -> None:
    model, vocab = tmp_path / "spm.model", tmp_path / "dict.txt"
    model.write_bytes(spm_content if spm_content is not None else (deltalm_vocab / "spm.model").read_bytes())
    vocab.write_text(dict_content if dict_content is not None else (deltalm_vocab / "dict.txt").read_text())
    with pytest.raises(prep.PrepError, match=re.escape(message)):
        _prep_with(corpus, tmp_path / "out", model, vocab)


def test_prep_spm_model_needs_vocab(corpus: Path, deltalm_vocab: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        prep.main(["--data-root", str(corpus), "--tgt-lang", "de", "--out-dir", str(tmp_path / "o"),
                   "--spm-model", str(deltalm_vocab / "spm.model")])
    assert "--spm-model and --vocab go together" in capsys.readouterr().err
    with pytest.raises(prep.PrepError, match=re.escape(f"{tmp_path / 'nope.txt'}: file not found (--vocab)")):
        _prep_with(corpus, tmp_path / "o", deltalm_vocab / "spm.model", tmp_path / "nope.txt")


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture()
def broken(corpus: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(corpus / "en-de", root / "en-de")
    return root / "en-de" / "data" / "train"


def _run_prep(root: Path, tmp_path: Path) -> None:
    prep.main(["--data-root", str(root), "--tgt-lang", "de", "--out-dir", str(tmp_path / "out"), "--splits", "train"])


def test_bad_missing_wav(broken: Path, tmp_path: Path) -> None:
    items = yaml.safe_load((broken / "txt" / "train.yaml").read_text())
    last = items[-1]["wav"]
    first_line = 1 + next(i for i, it in enumerate(items) if it["wav"] == last)
    (broken / "wav" / last).unlink()
    with pytest.raises(prep.PrepError) as e:
        _run_prep(broken.parents[2], tmp_path)
    assert f"train.yaml:{first_line} (item {first_line - 1}): wav file not found" in str(e.value)
    assert str(broken / "wav" / last) in str(e.value)


def test_bad_line_count(broken: Path, tmp_path: Path) -> None:
    de = broken / "txt" / "train.de"
    de.write_text("\n".join(de.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(prep.PrepError, match=r"train\.yaml has 12 segments but .*train\.de has 11 lines"):
        _run_prep(broken.parents[2], tmp_path)


def test_bad_segment_past_end(broken: Path, tmp_path: Path) -> None:
    y = broken / "txt" / "train.yaml"
    lines = y.read_text().splitlines()
    lines[2] = re.sub(r"offset: [\d.]+", "offset: 9999.000000", lines[2])
    y.write_text("\n".join(lines) + "\n")
    wav = re.search(r"wav: (\S+)\}", lines[2]).group(1)
    pattern = rf"train\.yaml:3 \(item 2\): segment 9999\.000000s.*past the end of .*{wav}"
    with pytest.raises(prep.PrepError, match=pattern):
        _run_prep(broken.parents[2], tmp_path)


def test_bad_empty_translation(broken: Path, tmp_path: Path) -> None:
    de = broken / "txt" / "train.de"
    lines = de.read_text().splitlines()
    lines[4] = "  "
    de.write_text("\n".join(lines) + "\n")
    with pytest.raises(prep.PrepError, match=r"train\.de:5: empty text"):
        _run_prep(broken.parents[2], tmp_path)


def test_bad_input_cli_exit_code(broken: Path, tmp_path: Path) -> None:
    (broken / "txt" / "train.en").write_text("")
    res = subprocess.run(
        [sys.executable, "-m", "data_prep.prep_mustc_data", "--data-root", str(broken.parents[2]), "--tgt-lang", "de",
         "--out-dir", str(tmp_path / "o"), "--splits", "train"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 1
    assert "error: line count mismatch" in res.stderr and "train.en has 0 lines" in res.stderr


def test_audio_error_in_manifest_names_line(prepared: dict[str, Path], tmp_path: Path) -> None:
    rows = read_manifest(prepared["de"] / "dev.tsv")
    path, off, n = rows[1].audio.rsplit(":", 2)
    rows[1].audio = f"{path}:{off}:{int(n) + 10_000_000}"
    rows[1].n_frames = int(n) + 10_000_000
    with pytest.raises(AudioError, match=rf"dev\.tsv:3 \(id {rows[1].id}\): segment .* past the end"):
        check_audio_refs(rows, "", prepared["de"] / "dev.tsv")


# --------------------------------------------------------------------------- determinism


def test_toy_deterministic(corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    toy.main(["--out", str(other), "--tgt-langs", "de,fr", "--seed", "1", "--workers", "1", *SMALL])
    assert _tree_hash(other) == _tree_hash(corpus)
    before = {p: p.stat().st_mtime_ns for p in other.rglob("*.wav")}
    toy.main(["--out", str(other), "--tgt-langs", "de,fr", "--seed", "1", *SMALL])  # rerun skips finished talks
    assert {p: p.stat().st_mtime_ns for p in other.rglob("*.wav")} == before
    assert _tree_hash(other) == _tree_hash(corpus)
    seed2 = tmp_path / "seed2"
    toy.main(["--out", str(seed2), "--tgt-langs", "de", "--seed", "2", "--train", "3", "--dev", "1", "--test", "1"])
    assert (seed2 / "en-de/data/dev/txt/dev.en").read_text() != (corpus / "en-de/data/dev/txt/dev.en").read_text()
