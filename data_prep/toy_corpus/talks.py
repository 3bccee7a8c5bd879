"""Corpus layout: talks (voice, pitch, rate and pauses per talk), their synthesis into one wav per talk, and the
MuST-C yaml segmentation lines. Reruns skip talks whose audio inputs are unchanged (``ROOT/.toy_cache``)."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from cress_bitnet.data.audio import SAMPLE_RATE
from cress_bitnet.fileio import atomic_output

from .espeak import EN_VOICES, MS, VARIANTS, synth_talk, to_16k_int16

SPLITS = ("train", "dev", "tst-COMMON")
TALK_ID_BASE = {"train": 1000, "dev": 5000, "tst-COMMON": 7000}
GENERATOR_VERSION = 1  # bump when the grammar or audio assembly changes (invalidates the rerun cache)


@dataclass
class Talk:
    split: str
    talk_id: int
    seg_index: list[int]  # indices into the split's sentence list
    voice: str
    pitch: int
    rates: list[int]
    gaps_ms: list[int]  # silence before each segment
    tail_ms: int

    @property
    def wav(self) -> str:
        return f"ted_{self.talk_id}.wav"


def plan_talks(seed: int, split: str, n_segments: int) -> list[Talk]:
    """Cut a split into talks of 8-40 segments, each with its own voice, pitch and speaking rate."""
    rng = random.Random(f"toy-mustc-talks-{seed}-{split}")
    talks: list[Talk] = []
    i = 0
    while i < n_segments:
        n = min(rng.randint(8, 40), n_segments - i)
        voice = f"{rng.choice(EN_VOICES)}+{rng.choice(VARIANTS)}"
        pitch = rng.randint(30, 70)
        base_rate = rng.randint(145, 190)
        rates = [base_rate + rng.randint(-10, 10) for _ in range(n)]
        gaps = [rng.randint(300, 900)] + [rng.randint(150, 700) for _ in range(n - 1)]
        talks.append(Talk(split, TALK_ID_BASE[split] + len(talks), list(range(i, i + n)), voice, pitch, rates, gaps,
                          rng.randint(200, 600)))  # fmt: skip
        i += n
    return talks


def _talk_key(talk: Talk, texts: list[str]) -> str:
    blob = json.dumps([GENERATOR_VERSION, talk.voice, talk.pitch, talk.rates, talk.gaps_ms, talk.tail_ms, texts])
    return hashlib.sha256(blob.encode()).hexdigest()


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _assemble(talk: Talk, segments: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    pieces: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for gap, seg in zip(talk.gaps_ms, segments):
        pieces.append(np.zeros(gap * MS, np.int16))
        pos += gap * MS
        spans.append((pos, len(seg)))
        pieces.append(seg)
        pos += len(seg)
    pieces.append(np.zeros(talk.tail_ms * MS, np.int16))
    return np.concatenate(pieces), spans


def _wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def synthesize_split(
    root: Path, split: str, talks: list[Talk], english: list[str], workers: int, wav_dir: Path, desc: str
) -> dict[int, list[tuple[int, int]]]:
    """Write one wav per talk into ``wav_dir`` (skipping finished talks); return each talk's (start, length) spans.

    ``root/.toy_cache/{split}/ted_X.json`` records the spans and a hash of everything the talk's audio depends on,
    so a rerun can skip a talk whose wav is present without re-synthesising it.
    """
    cache = root / ".toy_cache" / split
    cache.mkdir(parents=True, exist_ok=True)
    wav_dir.mkdir(parents=True, exist_ok=True)
    spans: dict[int, list[tuple[int, int]]] = {}
    todo: list[Talk] = []
    for talk in talks:
        texts = [english[i] for i in talk.seg_index]
        meta_path = cache / f"ted_{talk.talk_id}.json"
        if meta_path.exists() and (wav_dir / talk.wav).exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == _talk_key(talk, texts):
                spans[talk.talk_id] = [tuple(s) for s in meta["spans"]]
                continue
        todo.append(talk)
    jobs = []
    for talk in todo:
        texts = [english[i] for i in talk.seg_index]
        seeds = [int(hashlib.sha256(f"{talk.talk_id}-{k}".encode()).hexdigest()[:7], 16) for k in range(len(texts))]
        jobs.append({"texts": texts, "voice": talk.voice, "pitch": talk.pitch, "rates": talk.rates, "seeds": seeds})
    if jobs:
        ctx = mp.get_context("fork")
        bar = tqdm(total=sum(len(t.seg_index) for t in todo), desc=desc, unit="seg")
        with ctx.Pool(processes=max(1, workers), maxtasksperchild=1) as pool:
            for talk, raw in zip(todo, pool.imap(synth_talk, jobs, chunksize=1)):
                segs = [to_16k_int16(r) for r in raw]
                audio, talk_spans = _assemble(talk, segs)
                _write_bytes_atomic(wav_dir / talk.wav, _wav_bytes(audio))
                texts = [english[i] for i in talk.seg_index]
                meta = {"key": _talk_key(talk, texts), "spans": [list(s) for s in talk_spans]}
                _write_bytes_atomic(cache / f"ted_{talk.talk_id}.json", json.dumps(meta).encode())
                spans[talk.talk_id] = talk_spans
                bar.update(len(talk.seg_index))
        bar.close()
    return spans


def yaml_line(talk: Talk, start: int, length: int, n_words: int) -> str:
    return (
        f"- {{duration: {length / SAMPLE_RATE:.6f}, offset: {start / SAMPLE_RATE:.6f}, rW: {n_words}, uW: 0, "
        f"speaker_id: spk.{talk.talk_id}, wav: {talk.wav}}}"
    )


def write_text_if_changed(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes_atomic(path, data)


def copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


def read_exclusions(path: str) -> set[str]:
    out: set[str] = set()
    for p in sorted(Path(path).glob("en-*/data/*/txt/*.en")):
        if p.parent.parent.name != "train":
            out.update(line.strip() for line in p.read_text(encoding="utf-8").splitlines())
    return out
