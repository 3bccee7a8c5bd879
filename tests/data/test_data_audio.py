"""Audio reading for every manifest form (file, talk segment, stored zip) and its error messages."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import cress_bitnet.data.audio as audio_mod
from cress_bitnet.data.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioRef,
    audio_info,
    check_audio_refs,
    parse_audio_field,
    read_audio,
    resample_mono,
)
from cress_bitnet.data.manifest import ManifestRow


def _ramp(n: int) -> np.ndarray:
    """Distinct int16 values so a slice can be matched exactly."""
    return ((np.arange(n) % 20000) - 10000).astype(np.int16)


@pytest.fixture()
def talk(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = _ramp(48000)
    p = tmp_path / "talk.wav"
    sf.write(p, x, SAMPLE_RATE, subtype="PCM_16")
    return p, x


def test_parse_forms(tmp_path: Path) -> None:
    assert parse_audio_field("a/x.wav", tmp_path) == AudioRef(str(tmp_path / "a/x.wav"), None, None, "file")
    assert parse_audio_field("/abs/x.wav:5:7", tmp_path) == AudioRef("/abs/x.wav", 5, 7, "segment")
    assert parse_audio_field("f.zip:100:20").kind == "zip"
    with pytest.raises(AudioError, match="x.wav"):
        parse_audio_field("x.wav:1")
    with pytest.raises(AudioError, match=r"empty segment .* x\.wav"):
        parse_audio_field("x.wav:10:0")


def test_whole_file_and_segment_exact(talk: tuple[Path, np.ndarray]) -> None:
    p, x = talk
    whole = read_audio(str(p))
    assert whole.dtype == torch.float32 and whole.shape == (48000,)
    assert torch.equal(whole, torch.from_numpy(x.astype(np.float32) / 32768))
    seg = read_audio(f"{p.name}:12345:6789", p.parent)
    assert seg.shape == (6789,)
    assert torch.equal(seg, torch.from_numpy(x[12345 : 12345 + 6789].astype(np.float32) / 32768))
    assert audio_info(p) == (SAMPLE_RATE, 48000, 1)


def test_zip_member_wav_and_npy(tmp_path: Path, talk: tuple[Path, np.ndarray]) -> None:
    wav_path, x = talk
    arr = np.linspace(-0.5, 0.5, 3000, dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, arr)
    zpath = tmp_path / "feats.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as z:
        z.write(wav_path, arcname="utt1.wav")
        z.writestr("utt2.npy", buf.getvalue())
    # byte offsets exactly as fairseq's get_zip_manifest computes them
    with zipfile.ZipFile(zpath) as z:
        ptr = {i.filename: (i.header_offset + 30 + len(i.filename), i.file_size) for i in z.infolist()}
    w = read_audio(f"{zpath}:{ptr['utt1.wav'][0]}:{ptr['utt1.wav'][1]}")
    assert torch.equal(w, torch.from_numpy(x.astype(np.float32) / 32768))
    a = read_audio(f"{zpath.name}:{ptr['utt2.npy'][0]}:{ptr['utt2.npy'][1]}", tmp_path)
    assert torch.equal(a, torch.from_numpy(arr))
    rows = [{"id": "z", "audio": f"{zpath}:{ptr['utt1.wav'][0]}:{ptr['utt1.wav'][1]}", "n_frames": 48000}]
    check_audio_refs(rows)
    with pytest.raises(AudioError, match=r"m\.tsv:2 \(id z\): zip entry .* past the end of .*feats\.zip"):
        check_audio_refs([{**rows[0], "audio": f"{zpath}:{ptr['utt1.wav'][0]}:99999999"}], manifest_path="m.tsv")


def test_stereo_downmix_and_resample(tmp_path: Path) -> None:
    left = np.full(8000, 0.5, dtype=np.float32)
    right = np.full(8000, -0.25, dtype=np.float32)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    w = read_audio(str(p))
    assert w.shape == (8000,) and torch.allclose(w, torch.full((8000,), 0.125))

    t = np.arange(8000) / 8000
    p8 = tmp_path / "8k.flac"
    sf.write(p8, 0.5 * np.sin(2 * np.pi * 440 * t), 8000, subtype="PCM_16")
    w16 = read_audio(str(p8))
    assert w16.shape == (16000,)
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(w16.numpy()[200:-200] - ref[200:-200]).max() < 0.01  # same tone after resampling
    # segment offsets refer to the file's own rate; output is at 16 kHz
    assert read_audio(f"{p8}:4000:2000").shape == (4000,)
    assert resample_mono(torch.ones(2, 441), 44100).shape == (160,)


@pytest.mark.parametrize("subtype, scale", [("PCM_U8", 128), ("PCM_24", 2**23), ("PCM_32", 2**31)])
def test_integer_pcm_widths_read_as_float(tmp_path: Path, subtype: str, scale: int) -> None:
    x = np.array([0.0, 0.5, -0.5, -1.0, 0.25], dtype=np.float64)
    p = tmp_path / f"{subtype}.wav"
    sf.write(p, x, SAMPLE_RATE, subtype=subtype)
    w = read_audio(str(p))
    assert w.dtype == torch.float32
    assert np.abs(w.numpy() - x).max() <= 1.0 / scale + 1e-7
    assert float(w.abs().max()) <= 1.0


def test_npy_integer_is_scaled(tmp_path: Path) -> None:
    p = tmp_path / "a.npy"
    np.save(p, np.array([16384, -32768], dtype=np.int16))
    assert read_audio(str(p)).tolist() == [0.5, -1.0]


def test_errors_name_the_file(tmp_path: Path, talk: tuple[Path, np.ndarray]) -> None:
    p, _ = talk
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=r"train\.tsv:7: audio file not found: .*nope\.wav"):
        read_audio(str(missing), where="train.tsv:7")
    with pytest.raises(AudioError, match=r"segment 47000:2000 .* past the end of .*talk\.wav \(48000 samples\)"):
        read_audio(f"{p}:47000:2000")
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match=r"cannot (decode|read) audio file .*corrupt\.wav"):
        read_audio(str(bad))
    with pytest.raises(AudioError, match=r"empty segment .*talk\.wav"):
        read_audio(f"{p}:10:0")
    cut = tmp_path / "cut.wav"  # header promises 48000 samples, the data stops early
    cut.write_bytes(p.read_bytes()[:20000])
    with pytest.raises(AudioError, match=r"cut\.wav"):
        read_audio(f"{cut}:1000:30000")


def test_check_audio_refs(tmp_path: Path, talk: tuple[Path, np.ndarray]) -> None:
    p, _ = talk
    ok = [ManifestRow("a", f"{p.name}:0:16000", 16000, "t", line=2), ManifestRow("b", f"{p}:16000:32000", 32000, "t")]
    check_audio_refs(ok, tmp_path, "dev.tsv")
    bad_len = [ManifestRow("c", f"{p}:0:16000", 15999, "t", line=5)]
    with pytest.raises(AudioError, match=r"dev\.tsv:5 \(id c\): n_frames 15999 does not match .*16000"):
        check_audio_refs(bad_len, "", "dev.tsv")
    past = [ManifestRow("d", f"{p}:40000:9000", 9000, "t", line=4)]
    with pytest.raises(AudioError, match=r"dev\.tsv:4 \(id d\): segment 40000:9000 .* past the end of .*talk\.wav"):
        check_audio_refs(past, "", "dev.tsv")
    gone = [ManifestRow("e", "gone.wav:0:10", 10, "t", line=3)]
    with pytest.raises(AudioError, match=r"dev\.tsv:3 \(id e\): audio file not found: .*gone\.wav"):
        check_audio_refs(gone, tmp_path, "dev.tsv")


def _zip_with(tmp_path: Path, members: dict[str, bytes]) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A ZIP_STORED file and each member's (byte offset, byte length), as fairseq's get_zip_manifest computes them."""
    zpath = tmp_path / "audio.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    with zipfile.ZipFile(zpath) as z:
        return zpath, {i.filename: (i.header_offset + 30 + len(i.filename), i.file_size) for i in z.infolist()}


def _encoded(x: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, x.astype(np.float32))
    else:
        sf.write(buf, x, sr, format=fmt.upper(), subtype="VORBIS" if fmt == "ogg" else "PCM_16")
    return buf.getvalue()


# (form, sample rate, file samples, n_frames the manifest must hold): whole files of every extension, zip members of
# every kind, at 16 kHz and at other rates (n_frames counts samples after resampling: ceil(n * 16000 / sr)).
N_FRAMES_FORMS = [
    ("wav", 16000, 12345, 12345), ("flac", 16000, 12345, 12345), ("ogg", 16000, 12345, 12345),
    ("npy", 16000, 12345, 12345), ("wav", 8000, 4001, 8002), ("flac", 44100, 44101, 16001),
    ("zip:wav", 16000, 9999, 9999), ("zip:flac", 22050, 22051, 16001), ("zip:npy", 16000, 7777, 7777),
]


@pytest.mark.parametrize("form, sr, n, expected", N_FRAMES_FORMS)
def test_n_frames_is_checked_for_every_audio_form(tmp_path: Path, form: str, sr: int, n: int, expected: int) -> None:
    """Issue 14 item 3: a wrong n_frames is an error for whole files and zip entries too, not only segments."""
    x = (0.1 * np.sin(np.arange(n) / 7.0)).astype(np.float32)
    fmt = form.split(":")[-1]
    if form.startswith("zip:"):
        zpath, ptr = _zip_with(tmp_path, {f"u.{fmt}": _encoded(x, sr, fmt)})
        audio = f"{zpath.name}:{ptr[f'u.{fmt}'][0]}:{ptr[f'u.{fmt}'][1]}"
    else:
        (tmp_path / f"u.{fmt}").write_bytes(_encoded(x, sr, fmt))
        audio = f"u.{fmt}"
    assert len(read_audio(audio, tmp_path)) == expected  # the length the model really gets
    check_audio_refs([ManifestRow("u", audio, expected, "t", line=3)], tmp_path, "train.tsv")
    for wrong in (expected - 2, expected + 2, 2 * expected):
        with pytest.raises(AudioError, match=rf"train\.tsv:3 \(id u\): n_frames {wrong} does not match the length "
                                             rf"{expected}\b.*(u\.{fmt}|audio\.zip)"):
            check_audio_refs([ManifestRow("u", audio, wrong, "t", line=3)], tmp_path, "train.tsv")


class _CountingFile(io.FileIO):
    """A file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buf) -> int:  # noqa: ANN001
        n = super().readinto(buf)
        self.bytes_read += n or 0
        return n


def test_zip_entry_info_reads_the_header_only(tmp_path: Path) -> None:
    """The n_frames check of a zip entry must not decode (or read) the whole member."""
    x = np.zeros(160000, dtype=np.float32)
    zpath, ptr = _zip_with(tmp_path, {"long.wav": _encoded(x, 16000, "wav"), "long.npy": _encoded(x, 16000, "npy")})
    for name, frames in (("long.wav", 160000), ("long.npy", 160000)):
        off, length = ptr[name]
        with _CountingFile(zpath, "rb") as f:
            assert audio_mod.zip_entry_info(f, off, length) == (16000, frames)
        assert f.bytes_read < 10000 < length  # a header's worth, not the 320-640 KB of samples
