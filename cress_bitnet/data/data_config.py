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

# Every key this project reads and acts on. Anything else is an error naming it, so that no setting is ignored.
SUPPORTED_KEYS = (
    "vocab_filename", "bpe_tokenizer", "pre_tokenizer", "use_audio_input", "standardize_audio", "audio_root",
    "prepend_tgt_lang_tag", "use_sample_rate", "input_channels", "sampling_alpha",
)
# fairseq S2T keys for filterbank features: fairseq itself skips them when use_audio_input is true.
FEATURE_KEYS = (
    "input_feat_per_channel", "transforms", "feature_transforms", "waveform_transforms", "dataset_transforms",
    "specaugment", "global_cmvn",
)
REQUIRED_KEYS = ("vocab_filename",)


class DataConfigError(ValueError):
    """The data config YAML is missing, malformed or points at files that do not exist."""


def _check_keys(raw: dict[str, Any], path: Path) -> None:
    """Refuse missing required keys and every key that would be parsed and then ignored."""
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DataConfigError(f"{path}: missing key {missing[0]!r} (the fairseq dictionary of the SentencePiece model)")
    feature = [k for k in raw if k in FEATURE_KEYS]
    if feature:
        raise DataConfigError(
            f"{path}: {', '.join(feature)}: filterbank-feature setting(s), which have no effect on raw-waveform input "
            "(use_audio_input: true; fairseq skips them too); remove them"
        )
    unknown = [k for k in raw if k not in SUPPORTED_KEYS]
    if unknown:
        raise DataConfigError(
            f"{path}: unsupported key(s) {', '.join(unknown)} (cress_bitnet reads only: {', '.join(SUPPORTED_KEYS)}); "
            "remove them"
        )


def _as_int(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise DataConfigError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return int(value)


def _as_positive_float(value: Any, key: str, path: Path) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise DataConfigError(f"{path}: '{key}' must be a positive number, got {value!r}")
    return number


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
    # temperature of the sampling between comma-separated training splits (fairseq S2T; 1.0 = in proportion to size)
    sampling_alpha: float = 1.0
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
        _check_keys(raw, path)
        cfg = cls(path=path, raw=raw)
        cfg.vocab_filename = str(raw["vocab_filename"])
        cfg.bpe_tokenizer = raw.get("bpe_tokenizer") or cfg.bpe_tokenizer
        cfg.pre_tokenizer = raw.get("pre_tokenizer") or cfg.pre_tokenizer
        cfg.use_audio_input = _as_bool(raw.get("use_audio_input", True), "use_audio_input", path)
        cfg.standardize_audio = _as_bool(raw.get("standardize_audio", False), "standardize_audio", path)
        cfg.audio_root = str(raw.get("audio_root", "") or "")
        cfg.prepend_tgt_lang_tag = _as_bool(raw.get("prepend_tgt_lang_tag", False), "prepend_tgt_lang_tag", path)
        cfg.sample_rate = _as_int(raw.get("use_sample_rate", cfg.sample_rate), "use_sample_rate", path)
        if cfg.sample_rate != 16000:
            raise DataConfigError(
                f"{path}: use_sample_rate {cfg.sample_rate}: HuBERT takes 16000 Hz waveforms (audio at other rates is "
                "resampled to 16000 Hz on reading); set 16000 or remove the key"
            )
        cfg.sampling_alpha = _as_positive_float(raw.get("sampling_alpha", 1.0), "sampling_alpha", path)
        channels = _as_int(raw.get("input_channels", 1), "input_channels", path)
        if channels != 1:
            raise DataConfigError(
                f"{path}: input_channels {channels}: the model takes one channel (multi-channel audio is downmixed "
                "to mono on reading); set 1 or remove the key"
            )
        if not cfg.use_audio_input:
            raise DataConfigError(
                f"{path}: use_audio_input must be true: cress_bitnet feeds raw 16 kHz waveforms to HuBERT"
            )
        if not cfg.vocab_path.is_file():
            raise DataConfigError(f"{path}: vocab_filename not found: {cfg.vocab_path}")
        return cfg
