"""The speech-translation data config YAML (fairseq S2T keys), read with honest types.

fairseq's ``S2TDataConfig.standardize_audio`` is a method, so ``if cfg.standardize_audio:`` is always true and every
waveform gets layer-normalised although HuBERT Base was trained on raw audio. We read the key as a real boolean,
default off.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class DataConfigError(ValueError):
    """The data config YAML is missing, malformed or points at files that do not exist."""


def _as_bool(value: Any, key: str, path: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
        return value.lower() in {"true", "yes", "1"}
    raise DataConfigError(f"{path}: '{key}' must be true or false, got {value!r}")


@dataclass
class SpeechDataConfig:
    path: Path
    vocab_filename: str = "dict.txt"
    bpe_tokenizer: dict[str, Any] = field(default_factory=lambda: {"bpe": None})
    pre_tokenizer: dict[str, Any] = field(default_factory=lambda: {"tokenizer": None})
    use_audio_input: bool = True
    standardize_audio: bool = False
    audio_root: str = ""
    prepend_tgt_lang_tag: bool = False
    sample_rate: int = 16000
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, name: str) -> Path:
        """Relative file names in the YAML are relative to the YAML's folder, as in fairseq."""
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    @property
    def vocab_path(self) -> Path:
        return self.resolve(self.vocab_filename)

    @property
    def audio_root_path(self) -> Path:
        return self.resolve(self.audio_root) if self.audio_root else self.root

    def bpe_args(self) -> Namespace | None:
        cfg = dict(self.bpe_tokenizer or {})
        if not cfg.get("bpe"):
            return None
        if cfg.get("sentencepiece_model"):
            model = self.resolve(cfg["sentencepiece_model"])
            if not model.is_file():
                raise DataConfigError(f"{self.path}: bpe_tokenizer.sentencepiece_model not found: {model}")
            cfg["sentencepiece_model"] = str(model)
        return Namespace(**cfg)

    def pre_tokenizer_args(self) -> Namespace | None:
        cfg = dict(self.pre_tokenizer or {})
        return Namespace(**cfg) if cfg.get("tokenizer") else None

    @classmethod
    def load(cls, path: str | Path) -> SpeechDataConfig:
        path = Path(path)
        if not path.is_file():
            raise DataConfigError(f"data config not found: {path} (set with --config-yaml, relative to DATA)")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise DataConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise DataConfigError(f"{path}: expected a mapping at the top level")
        cfg = cls(path=path, raw=raw)
        cfg.vocab_filename = str(raw.get("vocab_filename", cfg.vocab_filename))
        cfg.bpe_tokenizer = raw.get("bpe_tokenizer") or cfg.bpe_tokenizer
        cfg.pre_tokenizer = raw.get("pre_tokenizer") or cfg.pre_tokenizer
        cfg.use_audio_input = _as_bool(raw.get("use_audio_input", True), "use_audio_input", path)
        cfg.standardize_audio = _as_bool(raw.get("standardize_audio", False), "standardize_audio", path)
        cfg.audio_root = str(raw.get("audio_root", "") or "")
        cfg.prepend_tgt_lang_tag = _as_bool(raw.get("prepend_tgt_lang_tag", False), "prepend_tgt_lang_tag", path)
        cfg.sample_rate = int(raw.get("use_sample_rate", raw.get("sample_rate", 16000)))
        if not cfg.use_audio_input:
            raise DataConfigError(
                f"{path}: use_audio_input must be true: cress_bitnet feeds raw 16 kHz waveforms to HuBERT"
            )
        if not cfg.vocab_path.is_file():
            raise DataConfigError(f"{path}: vocab_filename not found: {cfg.vocab_path}")
        return cfg
