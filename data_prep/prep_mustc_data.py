#!/usr/bin/env python3
"""Turn a MuST-C v1 language pair into fairseq raw-audio ST manifests, a joint SentencePiece model and a data config.

Why this instead of fairseq's ``examples/speech_to_text/prep_mustc_data.py``: that script cuts every segment into a
FLAC inside a zip through ``torchaudio.sox_effects`` (gone in torchaudio >= 2.9) and its default length filter drops
almost every raw-audio utterance (fairseq#3888). Like CRESS/STEMM we reference segments in place, as
``/abs/path/ted_X.wav:OFFSET:N_FRAMES`` in samples, so nothing is copied; only talks that are not 16 kHz mono are
converted once to ``OUT/wav16k/{split}/``.

Outputs in ``--out-dir``:

* ``{split}.tsv``: columns id, audio, n_frames, src_text, tgt_text, speaker (id ``{talk}_{i}``, segments of a talk
  sorted by float offset). Audio paths are absolute and ``audio_root`` is ''; with ``--audio-root DIR`` they are
  written relative to DIR and ``audio_root: DIR`` goes into the config instead.
* ``spm_unigram{N}.model/.vocab/.txt``: joint unigram model on train src+tgt (ids: bos 0, pad 1, eos 2, unk 3, as
  fairseq's ``gen_vocab``), the ``.txt`` in fairseq dictionary format without the 4 specials. ``N`` in the name is the
  requested size; on a small corpus the real size is smaller (logged).
* ``config.yaml`` (or ``--config-name``): the data config the task reads.

``--spm-model PATH --vocab PATH`` use an existing SentencePiece model and fairseq dictionary instead of training one
(e.g. DeltaLM's ``spm.model`` + ``dict.txt``, whose embeddings only fit that vocabulary): the config points at them
(absolute paths) and prep checks that every piece the manifests' texts encode to is in the dictionary, since fairseq
would silently map a missing piece to ``<unk>``.

Validation (errors name the file and line): yaml/text line counts, empty texts, missing wavs, segments past the end
of their wav, malformed yaml items. Reruns skip finished manifests and the spm model unless ``--overwrite``.

Example: ``python -m data_prep.prep_mustc_data --data-root data/toy_mustc --tgt-lang de --out-dir data/toy_mustc/en-de``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import yaml
from tqdm import tqdm

from cress_bitnet.data.audio import SAMPLE_RATE, AudioError, audio_info, read_audio
from cress_bitnet.data.manifest import ManifestError, ManifestRow, read_manifest, write_manifest
from cress_bitnet.fileio import atomic_output

MUSTC_LANGS = ("de", "es", "fr", "it", "nl", "pt", "ro", "ru")
SPM_SPECIALS = {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3}
logger = logging.getLogger("prep_mustc_data")


class PrepError(ValueError):
    """Invalid MuST-C input; the message names the file and line."""


@dataclass
class Segment:
    index: int  # item index in the yaml (0-based)
    yaml_line: int  # 1-based line of the item in the yaml file
    wav: str
    offset: float
    duration: float
    speaker: str
    src: str
    tgt: str


def find_pair_dir(data_root: Path, lang: str) -> Path:
    """Accept either the MuST-C root (holding en-xx/) or the en-xx folder itself."""
    for cand in (data_root / f"en-{lang}", data_root):
        if (cand / "data").is_dir():
            return cand
    raise PrepError(f"{data_root}: no MuST-C pair found (expected {data_root / f'en-{lang}' / 'data'})")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise PrepError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise PrepError(f"{path}:{line}: invalid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def load_split(pair_dir: Path, split: str, lang: str) -> tuple[list[Segment], Path]:
    """Read and cross-check yaml + both text files of one split."""
    txt = pair_dir / "data" / split / "txt"
    yaml_path = txt / f"{split}.yaml"
    if not yaml_path.is_file():
        raise PrepError(f"{yaml_path}: file not found")
    raw = yaml_path.read_text(encoding="utf-8")
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # all scalars as strings, as fairseq reads it
    try:
        items = yaml.load(raw, Loader=loader) or []
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{yaml_path}:{mark.line + 1}" if mark else str(yaml_path)
        raise PrepError(f"{where}: invalid yaml ({getattr(e, 'problem', e)})") from None
    if not isinstance(items, list):
        raise PrepError(f"{yaml_path}: expected a list of segments")
    item_lines = [k + 1 for k, ln in enumerate(raw.split("\n")) if ln.startswith("-")]
    if len(item_lines) != len(items):  # not one item per line: fall back to the item index
        item_lines = [0] * len(items)
    src_path, tgt_path = txt / f"{split}.en", txt / f"{split}.{lang}"
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if len(lines) != len(items):
            raise PrepError(
                f"line count mismatch: {yaml_path} has {len(items)} segments but {path} has {len(lines)} lines"
            )
    segs: list[Segment] = []
    for i, item in enumerate(items):
        where = f"{yaml_path}:{item_lines[i] or '?'} (item {i})"
        if not isinstance(item, dict) or not {"wav", "offset", "duration"} <= set(item):
            raise PrepError(f"{where}: segment needs wav, offset and duration, got {item!r}")
        try:
            offset, duration = float(item["offset"]), float(item["duration"])
        except ValueError:
            raise PrepError(f"{where}: offset/duration are not numbers: {item!r}") from None
        if offset < 0 or duration <= 0:
            raise PrepError(f"{where}: offset {offset} / duration {duration} out of range")
        for path, lines in ((src_path, src), (tgt_path, tgt)):
            if not lines[i].strip():
                raise PrepError(f"{path}:{i + 1}: empty text (segment {i} of {yaml_path})")
        speaker = str(item.get("speaker_id", "")) or Path(item["wav"]).stem
        segs.append(
            Segment(i, item_lines[i], str(item["wav"]), offset, duration, speaker, _clean(src[i]), _clean(tgt[i]))
        )
    return segs, yaml_path


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def convert_to_16k_mono(src: Path, dst: Path) -> None:
    """Resample/downmix a whole talk once (torchaudio resampling via read_audio) and write 16-bit PCM atomically."""
    wave = read_audio(str(src))
    with atomic_output(dst) as tmp:
        sf.write(str(tmp), wave.numpy(), SAMPLE_RATE, subtype="PCM_16")


def build_rows(
    pair_dir: Path, split: str, segs: list[Segment], yaml_path: Path, out_dir: Path, audio_root: str
) -> list[ManifestRow]:
    """Group segments by talk, sort by offset, check bounds, and make manifest rows (audio referenced in place)."""
    talks: dict[str, list[Segment]] = {}
    for s in segs:
        talks.setdefault(s.wav, []).append(s)
    rows: list[ManifestRow] = []
    for wav_name, group in tqdm(talks.items(), desc=f"{split} talks", unit="talk"):
        wav_path = (pair_dir / "data" / split / "wav" / wav_name).resolve()
        first = group[0]
        where = f"{yaml_path}:{first.yaml_line or '?'} (item {first.index})"
        if not wav_path.is_file():
            raise PrepError(f"{where}: wav file not found: {wav_path}")
        sr, frames, channels = audio_info(wav_path, where=where)
        for s in group:
            end = round((s.offset + s.duration) * sr)
            if end > frames:
                raise PrepError(
                    f"{yaml_path}:{s.yaml_line or '?'} (item {s.index}): segment {s.offset:.6f}s+{s.duration:.6f}s "
                    f"ends at sample {end}, past the end of {wav_path} ({frames} samples at {sr} Hz)"
                )
        use_path = wav_path
        if sr != SAMPLE_RATE or channels != 1:
            use_path = (out_dir / "wav16k" / split / wav_name).resolve()
            expected = round(frames * SAMPLE_RATE / sr)
            ok = use_path.is_file() and abs(audio_info(use_path)[1] - expected) <= 1 and audio_info(use_path)[2] == 1
            if not ok:
                logger.info("converting %s (%d Hz, %d ch) to 16 kHz mono: %s", wav_path, sr, channels, use_path)
                convert_to_16k_mono(wav_path, use_path)
            frames = audio_info(use_path)[1]
        audio_field = os.path.relpath(use_path, audio_root) if audio_root else str(use_path)
        for i, s in enumerate(sorted(group, key=lambda x: x.offset)):
            off = round(s.offset * SAMPLE_RATE)
            n = min(round(s.duration * SAMPLE_RATE), frames - off)  # conversion may round the talk 1 sample short
            rows.append(
                ManifestRow(
                    id=f"{Path(wav_name).stem}_{i}",
                    audio=f"{audio_field}:{off}:{n}",
                    n_frames=n,
                    tgt_text=s.tgt,
                    src_text=s.src,
                    speaker=s.speaker,
                )
            )
    return rows


def filter_train(rows: list[ManifestRow], min_n: int, max_n: int) -> list[ManifestRow]:
    """Drop train utterances that are too short for the conv front-end or too long for memory (STEMM: 1000/480000)."""
    short = sum(r.n_frames < min_n for r in rows)
    long_ = sum(r.n_frames > max_n for r in rows)
    kept = [r for r in rows if min_n <= r.n_frames <= max_n]
    logger.info("train length filter [%d, %d] samples: kept %d, dropped %d short + %d long", min_n, max_n, len(kept),
                short, long_)  # fmt: skip
    return kept


def train_spm(texts: list[str], prefix: Path, vocab_size: int, threads: int) -> int:
    """Joint unigram SentencePiece with fairseq's special ids; returns the real vocabulary size."""
    import sentencepiece as spm

    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write("\n".join(texts) + "\n")
        tmp = f.name
    size = vocab_size
    try:
        for _ in range(2):
            try:
                spm.SentencePieceTrainer.train(
                    input=tmp, model_prefix=str(prefix), vocab_size=size, model_type="unigram",
                    character_coverage=1.0, hard_vocab_limit=False, num_threads=threads, minloglevel=2,
                    input_sentence_size=2_000_000, shuffle_input_sentence=True, **SPM_SPECIALS,
                )  # fmt: skip
                break
            except RuntimeError as e:
                msg = str(e)
                if "<=" not in msg or size != vocab_size:
                    raise
                size = int(msg.rsplit("<=", 1)[1].strip().rstrip("."))
    finally:
        os.unlink(tmp)
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    real = sp.get_piece_size()
    if real < vocab_size:
        logger.info("note: corpus too small for %d pieces; vocabulary capped at %d", vocab_size, real)
    specials = {sp.id_to_piece(i) for i in SPM_SPECIALS.values()}
    with open(str(prefix) + ".txt", "w", encoding="utf-8") as f:
        for i in range(real):
            piece = sp.id_to_piece(i)
            if piece not in specials:
                f.write(f"{piece} 1\n")
    return real


def read_dictionary_symbols(path: Path) -> set[str]:
    """The symbols of a fairseq dictionary file (``symbol count [#fairseq:overwrite]`` per line)."""
    symbols: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip("\n").rsplit(" ", 2 if line.rstrip().endswith("#fairseq:overwrite") else 1)
            if len(fields) < 2 or not fields[0] or not fields[1].lstrip("-").isdigit():
                raise PrepError(f"{path}:{n}: not a fairseq dictionary line ('<symbol> <count>'): {line.rstrip()!r}")
            symbols.add(fields[0])
    if not symbols:
        raise PrepError(f"{path}: empty dictionary")
    return symbols


def check_vocab(spm_model: Path, vocab: Path, manifests: list[Path]) -> int:
    """Check that ``vocab`` holds every piece ``spm_model`` cuts the manifests' texts into; returns the piece count.

    Characters the SentencePiece model cannot represent become its unknown piece whatever the dictionary holds, so
    they are only counted in the log.
    """
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    except (OSError, RuntimeError) as e:
        raise PrepError(f"{spm_model}: not a SentencePiece model ({e})") from e
    symbols = read_dictionary_symbols(vocab)
    missing: dict[str, str] = {}  # piece -> first place it is used
    used: set[str] = set()
    unknown = 0
    for tsv in manifests:
        for row in read_manifest(tsv):
            for field, text in (("src_text", row.src_text), ("tgt_text", row.tgt_text)):
                for piece_id, piece in zip(sp.encode(text), sp.encode(text, out_type=str)):
                    if piece_id == sp.unk_id():
                        unknown += 1
                        continue
                    used.add(piece)
                    if piece not in symbols and piece not in missing:
                        missing[piece] = f"{tsv}:{row.line} {field}"
    if missing:
        examples = ", ".join(f"{p!r} ({where})" for p, where in list(missing.items())[:5])
        raise PrepError(f"{vocab}: {len(missing)} SentencePiece piece(s) of {spm_model} used by the data are not in "
                        f"the dictionary, e.g. {examples}; --spm-model and --vocab must come from the same release")
    if unknown:
        logger.info("note: %d character run(s) are outside %s and encode to its unknown piece", unknown, spm_model)
    return len(used)


def write_config(path: Path, spm_model: Path, vocab: Path, audio_root: str) -> None:
    """The data config read by the task (keys as fairseq's S2TDataConfig); files in its folder by name, others by
    absolute path."""

    def name(file: Path) -> str:
        return file.name if file.parent.resolve() == path.parent.resolve() else str(file.resolve())

    cfg = {
        "vocab_filename": name(vocab),
        "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": name(spm_model)},
        "use_audio_input": True,
        "input_channels": 1,
        "standardize_audio": False,
        "use_sample_rate": SAMPLE_RATE,
        "audio_root": audio_root,
        "prepend_tgt_lang_tag": False,
    }
    header = (
        "# Written by python -m data_prep.prep_mustc_data. Relative paths resolve against this file's folder.\n"
        "# audio_root '' means the manifests hold absolute audio paths (wav:offset:n_frames in samples).\n"
        "# standardize_audio false: HuBERT Base was pre-trained on raw, unnormalised waveforms.\n"
    )
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")


def ensure_spm(out: Path, vocab_size: int, threads: int, overwrite: bool) -> tuple[Path, Path]:
    """Train the joint SentencePiece model on ``out/train.tsv`` unless present; returns (model, dictionary)."""
    spm_prefix = out / f"spm_unigram{vocab_size}"
    model, vocab = Path(str(spm_prefix) + ".model"), Path(str(spm_prefix) + ".txt")
    if all(Path(str(spm_prefix) + ext).exists() for ext in (".model", ".vocab", ".txt")) and not overwrite:
        logger.info("%s exists, skipping spm training", model)
        return model, vocab
    train_tsv = out / "train.tsv"
    if not train_tsv.exists():
        raise PrepError(f"{train_tsv}: needed to train SentencePiece; include 'train' in --splits")
    train_rows = read_manifest(train_tsv)
    texts = [r.src_text for r in train_rows] + [r.tgt_text for r in train_rows]
    real = train_spm(texts, spm_prefix, vocab_size, threads)
    logger.info("wrote %s.{model,vocab,txt} (%d pieces)", spm_prefix, real)
    return model, vocab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, help="MuST-C root holding en-xx/ (or the en-xx folder itself)")
    ap.add_argument("--tgt-lang", required=True, choices=MUSTC_LANGS)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--vocab-size", type=int, default=10000)
    ap.add_argument("--splits", default="train,dev,tst-COMMON")
    ap.add_argument("--min-n-frames", type=int, default=1000, help="train filter, samples")
    ap.add_argument("--max-n-frames", type=int, default=480000, help="train filter, samples (30 s)")
    ap.add_argument("--config-name", default="config.yaml")
    ap.add_argument("--audio-root", default="", help="write audio paths relative to this dir (default: absolute)")
    ap.add_argument("--spm-threads", type=int, default=1)
    ap.add_argument("--spm-model", type=Path, help="use this SentencePiece model (e.g. DeltaLM's spm.model) instead of "
                    "training one; needs --vocab")
    ap.add_argument("--vocab", type=Path, help="fairseq dictionary of --spm-model (e.g. DeltaLM's dict.txt)")
    ap.add_argument("--overwrite", action="store_true", help="redo manifests and the spm model even if present")
    args = ap.parse_args(argv)
    if (args.spm_model is None) != (args.vocab is None):
        ap.error("--spm-model and --vocab go together (an existing SentencePiece model and its dictionary)")
    logging.basicConfig(level=logging.INFO, format="[prep_mustc_data] %(message)s", force=True)
    for path, flag in ((args.spm_model, "--spm-model"), (args.vocab, "--vocab")):
        if path is not None and not path.is_file():
            raise PrepError(f"{path}: file not found ({flag})")

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    audio_root = str(Path(args.audio_root).resolve()) if args.audio_root else ""
    pair = find_pair_dir(Path(args.data_root), args.tgt_lang)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for split in splits:
        tsv = out / f"{split}.tsv"
        if tsv.exists() and not args.overwrite:
            logger.info("%s exists, skipping (use --overwrite to redo)", tsv)
            continue
        segs, yaml_path = load_split(pair, split, args.tgt_lang)
        rows = build_rows(pair, split, segs, yaml_path, out, audio_root)
        if split.startswith("train"):
            rows = filter_train(rows, args.min_n_frames, args.max_n_frames)
        if not rows:
            raise PrepError(f"{yaml_path}: no segments left for {split}")
        write_manifest(tsv, rows)
        logger.info("wrote %s (%d rows)", tsv, len(rows))

    if args.spm_model is not None:
        spm_model, vocab = args.spm_model.resolve(), args.vocab.resolve()
        used = check_vocab(spm_model, vocab, [out / f"{split}.tsv" for split in splits])
        logger.info("%s: the data uses %d pieces, all in %s", spm_model, used, vocab)
    else:
        spm_model, vocab = ensure_spm(out, args.vocab_size, args.spm_threads, args.overwrite)
    write_config(out / args.config_name, spm_model, vocab, audio_root)
    logger.info("wrote %s", out / args.config_name)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (PrepError, AudioError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
