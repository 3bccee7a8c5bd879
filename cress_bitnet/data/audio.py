"""Audio I/O for manifests: whole files, MuST-C talk segments and fairseq's stored-zip entries.

Everything is read with soundfile (plus numpy for ``.npy``): torchaudio >= 2.9 has no sox backend and its ``load``
needs TorchCodec, so fairseq's ``get_waveform`` cannot be used. Resampling uses ``torchaudio.functional.resample``.
No fairseq import here, so data prep scripts and tests can use this module on their own.

The ``audio`` field of a manifest takes one of three forms (paths relative to ``audio_root`` unless absolute):

* ``x.wav`` (also ``.flac``/``.ogg``/``.npy``): the whole file;
* ``x.wav:OFFSET:N``: ``N`` samples starting at sample ``OFFSET`` of a long file (CRESS/STEMM's MuST-C form);
  offset and count are in the file's own sample rate;
* ``x.zip:BYTE_OFFSET:BYTE_LEN``: one member of an uncompressed (ZIP_STORED) zip, as fairseq's ``get_zip_manifest``
  writes; the bytes are a wav/flac/ogg file or a ``.npy`` array.

Multi-channel audio is downmixed to mono by averaging the channels; other sample rates are resampled to
``target_sr``. ``.npy`` arrays carry no rate and are taken to be at ``target_sr`` already.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".npy")
_NPY_MAGIC = b"\x93NUMPY"


class AudioError(ValueError):
    """Audio that cannot be located or decoded; the message names the audio file (and the manifest line if known)."""


@dataclass(frozen=True)
class AudioRef:
    """A parsed ``audio`` field. ``offset``/``length`` are samples (segment) or bytes (zip); None for whole files."""

    path: str
    offset: int | None
    length: int | None
    kind: str  # "file" | "segment" | "zip"


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def parse_audio_field(field: str, audio_root: str | Path = "", *, where: str = "") -> AudioRef:
    """Split a manifest ``audio`` field into path and slice, so every reader agrees on the three forms."""
    if not isinstance(field, str) or not field.strip():
        raise AudioError(f"{_prefix(where)}empty audio field")
    parts = field.split(":")
    if len(parts) == 1:
        path, offset, length, kind = parts[0], None, None, "file"
    elif len(parts) == 3:
        path = parts[0]
        try:
            offset, length = int(parts[1]), int(parts[2])
        except ValueError:
            raise AudioError(
                f"{_prefix(where)}audio field {field!r}: offset and length must be integers (file {path})"
            ) from None
        if offset < 0:
            raise AudioError(f"{_prefix(where)}audio field {field!r}: negative offset (file {path})")
        if length <= 0:
            raise AudioError(f"{_prefix(where)}audio field {field!r}: empty segment (length {length}) in file {path}")
        kind = "zip" if path.lower().endswith(".zip") else "segment"
    else:
        raise AudioError(
            f"{_prefix(where)}audio field {field!r} is not 'file', 'file:offset:n_samples' or 'file.zip:offset:len'"
        )
    if kind == "file" and not path.lower().endswith(AUDIO_EXTENSIONS):
        raise AudioError(f"{_prefix(where)}audio file {path} has an unsupported extension (want {AUDIO_EXTENSIONS})")
    p = Path(path)
    if audio_root and not p.is_absolute():
        p = Path(audio_root) / p
    return AudioRef(str(p), offset, length, kind)


@functools.lru_cache(maxsize=4096)
def _info_cached(path: str, mtime_ns: int, size: int) -> tuple[int, int, int]:
    if path.lower().endswith(".npy"):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim == 1:
            return SAMPLE_RATE, int(arr.shape[0]), 1
        if arr.ndim == 2:
            return SAMPLE_RATE, int(max(arr.shape)), int(min(arr.shape))
        raise ValueError(f"array of shape {arr.shape} is not a waveform")
    info = sf.info(path)
    return int(info.samplerate), int(info.frames), int(info.channels)


def audio_info(path: str | Path, *, where: str = "") -> tuple[int, int, int]:
    """(sample_rate, num_frames, channels) from the header only; cached per path (and mtime) for manifest checks."""
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(f"{_prefix(where)}audio file not found: {path}") from None
    try:
        return _info_cached(path, st.st_mtime_ns, st.st_size)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
        raise AudioError(f"{_prefix(where)}cannot read audio file {path}: {e}") from None


def resampled_length(frames: int, sr: int, target_sr: int = SAMPLE_RATE) -> int:
    """Samples that ``frames`` samples at ``sr`` become after resampling to ``target_sr``.

    ``torchaudio.functional.resample`` returns ``ceil(frames * target_sr / sr)`` samples; ``n_frames`` in a manifest
    counts samples at ``target_sr``, so this is the number it must hold for audio stored at another rate.
    """
    frames, sr, target_sr = int(frames), int(sr), int(target_sr)
    return frames if sr == target_sr else -(-frames * target_sr // sr)


class _ByteRange(io.RawIOBase):
    """A read-only, seekable window ``[start, start + length)`` of an open file: soundfile and numpy read the header
    of one zip member through it without reading the member's audio."""

    def __init__(self, f: io.BufferedReader, start: int, length: int) -> None:
        super().__init__()
        self._f, self._start, self._len, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        self._pos = min(max(base + offset, 0), self._len)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self._len - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _npy_header_frames(fp: Any) -> int:
    version = np.lib.format.read_magic(fp)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = read_header(fp)
    if len(shape) == 1:
        return int(shape[0])
    if len(shape) == 2:
        return int(max(shape))
    raise ValueError(f"array of shape {shape} is not a waveform")


def zip_entry_info(f: io.BufferedReader, offset: int, length: int) -> tuple[int, int]:
    """(sample_rate, num_frames) of one stored zip member at ``offset``/``length`` bytes, from its header only."""
    window = _ByteRange(f, offset, length)
    if window.read(6) == _NPY_MAGIC:
        window.seek(0)
        return SAMPLE_RATE, _npy_header_frames(window)
    window.seek(0)
    info = sf.info(window)
    return int(info.samplerate), int(info.frames)


def _int_to_float(arr: np.ndarray) -> np.ndarray:
    """Scale integer PCM to [-1, 1] like soundfile does for wav files (unsigned 8-bit is offset binary)."""
    if arr.dtype.kind == "u":
        bits = arr.dtype.itemsize * 8
        return (arr.astype(np.float64) - 2 ** (bits - 1)) / 2 ** (bits - 1)
    if arr.dtype.kind == "i":
        return arr.astype(np.float64) / 2 ** (arr.dtype.itemsize * 8 - 1)
    return arr


def _npy_to_channels_first(arr: np.ndarray) -> np.ndarray:
    arr = _int_to_float(np.asarray(arr)).astype(np.float32, copy=False)
    if arr.ndim == 1:
        return arr[None, :]
    if arr.ndim == 2:
        return arr if arr.shape[0] <= arr.shape[1] else arr.T  # (C, T): channels are the short side
    raise ValueError(f"array of shape {arr.shape} is not a waveform")


def _decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    if data[:6] == _NPY_MAGIC:
        return _npy_to_channels_first(np.load(io.BytesIO(data), allow_pickle=False)), SAMPLE_RATE
    wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return wav.T, int(sr)


def resample_mono(wave: torch.Tensor, sr: int, target_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Downmix (C, T) by averaging channels and resample to ``target_sr``; returns a contiguous float32 (T',)."""
    if wave.dim() == 2:
        wave = wave.float().mean(dim=0)
    elif wave.dim() != 1:
        raise ValueError(f"expected a (C, T) or (T,) waveform, got shape {tuple(wave.shape)}")
    wave = wave.float()
    if sr != target_sr:
        wave = AF.resample(wave, int(sr), int(target_sr))
    return wave.contiguous()


def read_audio(
    field_or_ref: str | AudioRef,
    audio_root: str | Path = "",
    *,
    target_sr: int = SAMPLE_RATE,
    where: str = "",
) -> torch.Tensor:
    """Load one manifest entry as a 1-D float32 waveform at ``target_sr`` (mono, resampled if needed)."""
    if isinstance(field_or_ref, AudioRef):
        ref = field_or_ref
    else:
        ref = parse_audio_field(field_or_ref, audio_root, where=where)
    pre = _prefix(where)
    if not os.path.isfile(ref.path):
        raise AudioError(f"{pre}audio file not found: {ref.path}")
    try:
        if ref.kind == "zip":
            size = os.path.getsize(ref.path)
            if ref.offset + ref.length > size:
                raise AudioError(
                    f"{pre}zip entry {ref.offset}+{ref.length} bytes lies past the end of {ref.path} ({size} bytes)"
                )
            with open(ref.path, "rb") as f:
                f.seek(ref.offset)
                data = f.read(ref.length)
            wav, sr = _decode_bytes(data)
        elif ref.kind == "segment":
            sr, frames, _ = audio_info(ref.path, where=where)
            if ref.offset + ref.length > frames:
                raise AudioError(
                    f"{pre}segment {ref.offset}:{ref.length} (ends at sample {ref.offset + ref.length}) lies past the "
                    f"end of {ref.path} ({frames} samples)"
                )
            if ref.path.lower().endswith(".npy"):
                arr = np.load(ref.path, mmap_mode="r", allow_pickle=False)
                wav = _npy_to_channels_first(np.array(arr))[:, ref.offset : ref.offset + ref.length]
            else:
                data, sr = sf.read(ref.path, start=ref.offset, frames=ref.length, dtype="float32", always_2d=True)
                wav = data.T
        elif ref.path.lower().endswith(".npy"):
            wav, sr = _npy_to_channels_first(np.load(ref.path, allow_pickle=False)), SAMPLE_RATE
        else:
            data, sr = sf.read(ref.path, dtype="float32", always_2d=True)
            wav = data.T
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError, EOFError) as e:
        raise AudioError(f"{pre}cannot decode audio file {ref.path}: {e}") from None
    if ref.kind == "segment" and wav.shape[-1] != ref.length:
        raise AudioError(
            f"{pre}truncated audio file {ref.path}: segment {ref.offset}:{ref.length} gave {wav.shape[-1]} samples"
        )
    at = f" at {ref.offset}:{ref.length}" if ref.offset is not None else ""
    if wav.shape[-1] == 0:
        raise AudioError(f"{pre}empty audio in {ref.path}{at}")
    if not np.isfinite(wav).all():
        bad = int(np.size(wav) - np.isfinite(wav).sum())
        raise AudioError(f"{pre}audio {ref.path}{at} holds {bad} NaN or infinite samples")
    return resample_mono(torch.from_numpy(np.ascontiguousarray(wav)), sr, target_sr)


def _row_get(row: Any, key: str, default: Any = "") -> Any:
    if isinstance(row, Mapping):
        return row.get(key, default)
    return getattr(row, key, default)


def check_audio_refs(rows: Iterable[Any], audio_root: str | Path = "", manifest_path: str | Path = "") -> None:
    """Validate every row's audio from headers only, before training starts, for all three ``audio`` forms.

    Checks: the file exists and is readable, a segment or zip entry lies inside its file, the audio has samples, and
    ``n_frames`` equals the audio's length at ``SAMPLE_RATE`` (:func:`resampled_length`; one sample of slack when
    the audio is resampled, for prep tools that round instead of taking the ceiling). Why: batching and the length
    filters trust ``n_frames``; a wrong value silently changes which utterances are kept and how they are batched.
    Whole files cost one ``sf.info`` per distinct file; zip entries one header read each.
    """
    zips: dict[str, tuple[io.BufferedReader, int]] = {}
    try:
        for idx, row in enumerate(rows):
            line = _row_get(row, "line", 0) or idx + 2  # header is line 1
            rid = _row_get(row, "id", "?")
            where = f"{manifest_path}:{line} (id {rid})" if manifest_path else f"line {line} (id {rid})"
            ref = parse_audio_field(str(_row_get(row, "audio")), audio_root, where=where)
            if ref.kind == "zip":
                sr, frames = _zip_entry_frames(ref, zips, where)
                what = f"zip entry {ref.offset}:{ref.length} of {ref.path}"
            else:
                sr, frames, _ = audio_info(ref.path, where=where)
                what = ref.path
                if ref.kind == "segment":
                    if ref.offset + ref.length > frames:
                        raise AudioError(
                            f"{where}: segment {ref.offset}:{ref.length} (ends at sample {ref.offset + ref.length}) "
                            f"lies past the end of {ref.path} ({frames} samples)"
                        )
                    frames, what = ref.length, f"segment {ref.offset}:{ref.length} of {ref.path}"
            if frames <= 0:
                raise AudioError(f"{where}: {what} has no samples")
            expected = resampled_length(frames, sr)
            raw = _row_get(row, "n_frames", expected)
            try:
                n_frames = int(raw)
            except (TypeError, ValueError):
                raise AudioError(f"{where}: n_frames {raw!r} is not an integer (audio {what})") from None
            if abs(n_frames - expected) > (0 if sr == SAMPLE_RATE else 1):
                rate = "" if sr == SAMPLE_RATE else f" ({frames} samples at {sr} Hz resampled to {SAMPLE_RATE} Hz)"
                raise AudioError(f"{where}: n_frames {n_frames} does not match the length {expected}{rate} of {what}")
    finally:
        for f, _ in zips.values():
            f.close()


def _zip_entry_frames(ref: AudioRef, zips: dict[str, tuple[io.BufferedReader, int]], where: str) -> tuple[int, int]:
    if ref.path not in zips:
        if not os.path.isfile(ref.path):
            raise AudioError(f"{where}: audio file not found: {ref.path}")
        zips[ref.path] = (open(ref.path, "rb"), os.path.getsize(ref.path))  # noqa: SIM115 - closed by the caller
    f, size = zips[ref.path]
    if ref.offset + ref.length > size:
        raise AudioError(
            f"{where}: zip entry {ref.offset}+{ref.length} bytes lies past the end of {ref.path} ({size} bytes)"
        )
    try:
        return zip_entry_info(f, ref.offset, ref.length)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError, EOFError) as e:
        raise AudioError(f"{where}: cannot read zip entry {ref.offset}:{ref.length} of {ref.path}: {e}") from None
