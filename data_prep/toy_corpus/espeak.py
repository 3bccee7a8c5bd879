"""eSpeak NG speech synthesis through ctypes, and its conversion to the corpus's 16 kHz 16-bit audio.

The library comes from the ``espeakng_loader`` wheel (no system package needed). eSpeak keeps hidden state between
utterances in a process, so :func:`synth_talk` is meant to run in a fresh process per talk (see ``talks``), with
fixed random seeds for byte-identical output.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from cress_bitnet.data.audio import SAMPLE_RATE, resample_mono

ESPEAK_SR = 22050
EN_VOICES = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
AUDIO_OUTPUT_RETRIEVAL = 1
ESPEAK_INIT_DONT_EXIT = 0x8000
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
POS_CHARACTER, ESPEAK_CHARS_UTF8 = 1, 1
MS = SAMPLE_RATE // 1000  # all positions are multiples of 1 ms so the yaml's 6-decimal seconds are exact


class Espeak:
    """Minimal libespeak-ng binding; one per process (the library is a process-wide singleton)."""

    CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.libc = ctypes.CDLL(None)
        sr = self.lib.espeak_Initialize(AUDIO_OUTPUT_RETRIEVAL, 0, espeakng_loader.get_data_path().encode(),
                                        ESPEAK_INIT_DONT_EXIT)  # fmt: skip
        if sr != ESPEAK_SR:
            raise RuntimeError(f"espeak_Initialize returned {sr}, expected sample rate {ESPEAK_SR}")
        self._chunks: list[np.ndarray] = []
        self._cb = self.CALLBACK(self._collect)  # keep a reference: ctypes callbacks die with their object
        self.lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, n, events) -> int:  # noqa: ANN001
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, voice: str, rate: int, pitch: int, seed: int) -> np.ndarray:
        self._chunks = []
        self.libc.srand(seed & 0x7FFFFFFF)
        self.lib.espeak_ng_SetRandSeed(seed & 0x7FFFFFFF)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak has no voice {voice!r}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, rate, 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, pitch, 0)
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def synth_talk(job: dict) -> list[np.ndarray]:
    """Runs in a fresh process per talk: eSpeak's output depends on everything it spoke before in the process."""
    engine = Espeak()
    return [
        engine.synth(text, job["voice"], rate, job["pitch"], seed)
        for text, rate, seed in zip(job["texts"], job["rates"], job["seeds"])
    ]


def _trim(wave: np.ndarray, threshold: int = 64, margin: int = 40 * ESPEAK_SR // 1000) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wave.astype(np.int32)) > threshold)
    if loud.size == 0:
        return wave
    return wave[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def to_16k_int16(wave: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(_trim(wave).astype(np.float32) / 32768.0)
    y = resample_mono(x, ESPEAK_SR, SAMPLE_RATE).numpy()
    y = np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)
    pad = (-len(y)) % MS
    return np.concatenate([y, np.zeros(pad, np.int16)]) if pad else y
