"""A registry of checkpoint formats: how to recognise a file, how its weight names map to ours, which architecture it
implies, and how to rewrite it in memory as a native checkpoint of this plugin.

Why a registry: the same file reaches the plugin through many doors (``fairseq-generate --path``, ``--restore-file``,
``--pretrained-st-checkpoint``, ``--kd-teacher``, ``--hubert-model-path``,
``--load-pretrained-mt-encoder-decoder-from``, the exporter). Each door asks the registry which format a file is
(:func:`detect_format`), and every checkpoint fairseq itself reads is upgraded once by :func:`upgrade_to_native`
(installed by :mod:`cress_bitnet.fairseq_patches`), so a foreign format is handled in exactly one place -- the
approach of fairseq's own ``checkpoint_utils._upgrade_state_dict`` and of the per-architecture
``upgrade_state_dict_named`` hooks, made explicit and extensible.

A new format is one :class:`CheckpointFormat` passed to :func:`register_format` (from any module) plus a test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cress_bitnet.checkpoints.args import saved_arch, saved_model_args
from cress_bitnet.checkpoints.safe import CheckpointError

logger = logging.getLogger(__name__)

# What a checkpoint can initialise, and the flags that accept it (for error messages).
ROLES = ("hubert", "mt", "st")
ROLE_FLAGS = {
    "hubert": "--hubert-model-path",
    "mt": "--load-pretrained-mt-encoder-decoder-from",
    "st": "fairseq-generate --path, --restore-file, --pretrained-st-checkpoint or --kd-teacher",
}

ROLE_NOUNS = {
    "hubert": "a HuBERT checkpoint",
    "mt": "an MT checkpoint",
    "st": "a hubert_transformer speech-translation checkpoint (ours, CRESS's or onebit-st's)",
}

KeyMap = tuple[dict[str, str], dict[str, str]]  # ({our key: the file's key}, {the file's key: why it is dropped})


def identity_keys(keys: Iterable[str]) -> KeyMap:
    return {k: k for k in keys}, {}


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint format.

    * ``detect(state) -> bool`` sees the whole loaded dict (``model``/``weights``, ``args``/``cfg``); it must be cheap
      and must not raise.
    * ``roles``: what the file can initialise (``hubert``, ``mt``, ``st``); a door that needs another role refuses it,
      saying what the file is and which flag takes it.
    * ``arch``: the architecture it implies, a name or ``callable(state)``.
    * ``map_keys(keys) -> (renames, dropped)``: our key for each of the file's keys, and the keys not loaded with the
      reason (logged one line each). The MT and HuBERT loaders use it to place weights into their own modules.
    * ``upgrade(state, report)``: rewrite a foreign ST checkpoint in memory as a native one (weights through
      ``map_keys``, then its args); None for formats that are already native or that only initialise a part.
    * ``weights_entry``: where the weights live (``model``; DeltaLM's pretrained files use ``weights``).
    * ``priority``: higher is tried first (specific formats above the generic ones they overlap).
    """

    name: str
    description: str
    roles: frozenset[str]
    detect: Callable[[Mapping[str, Any]], bool]
    arch: str | Callable[[Mapping[str, Any]], str | None] | None = None
    map_keys: Callable[[Iterable[str]], KeyMap] = identity_keys
    upgrade: Callable[[dict[str, Any], UpgradeReport], None] | None = None
    weights_entry: str = "model"
    priority: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if not self.roles or unknown:
            raise ValueError(f"checkpoint format {self.name!r}: roles must be a non-empty subset of {ROLES}")

    def implied_arch(self, state: Mapping[str, Any]) -> str | None:
        return self.arch(state) if callable(self.arch) else self.arch

    def weights(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        found = state.get(self.weights_entry)
        return found if isinstance(found, Mapping) else {}


@dataclass
class UpgradeReport:
    """What :func:`upgrade_to_native` did to one loaded checkpoint (also logged)."""

    path: str
    format: CheckpointFormat
    args: Any = None  # the saved model args after the upgrade (a Namespace), or None
    renamed: dict[str, str] = field(default_factory=dict)  # the file's key -> ours
    dropped: dict[str, str] = field(default_factory=dict)  # the file's key -> reason
    args_set: dict[str, Any] = field(default_factory=dict)  # model-args fields written by the upgrade
    notes: list[str] = field(default_factory=list)

    @property
    def foreign(self) -> bool:
        return self.format.upgrade is not None

    def set_arg(self, args: Any, name: str, value: Any, why: str) -> None:
        """Write one saved model-args field and log why (no-op, silently, when it already has that value)."""
        if getattr(args, name, None) == value and hasattr(args, name):
            return
        setattr(args, name, value)
        self.args_set[name] = value
        shown = value if not isinstance(value, str) or len(value) < 120 else value[:117] + "..."
        self.note(f"set model arg {name}={shown!r}: {why}")

    def note(self, message: str) -> None:
        self.notes.append(message)
        logger.info(f"{self.path}: {message}")


_FORMATS: dict[str, CheckpointFormat] = {}
_RECENT: dict[str, UpgradeReport] = {}  # realpath -> the last upgrade of that file in this process


def register_format(fmt: CheckpointFormat, *, replace: bool = False) -> CheckpointFormat:
    """Add a format to the registry (any module may do so; names are unique unless ``replace``)."""
    if not isinstance(fmt, CheckpointFormat):
        raise TypeError(f"register_format expects a CheckpointFormat, got {type(fmt).__name__}")
    if fmt.name in _FORMATS and not replace:
        raise ValueError(f"checkpoint format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> CheckpointFormat | None:
    """Remove a format (tests, or a plugin replacing a built-in entry); returns it, or None if it was not there."""
    return _FORMATS.pop(name, None)


def registered_formats() -> list[CheckpointFormat]:
    """Formats in the order they are tried: highest priority first, then registration order."""
    ordered = list(_FORMATS.values())
    return sorted(ordered, key=lambda f: -f.priority)


def get_format(name: str) -> CheckpointFormat:
    if name not in _FORMATS:
        raise KeyError(f"unknown checkpoint format {name!r}; registered: {', '.join(_FORMATS)}")
    return _FORMATS[name]


def find_format(state: Mapping[str, Any]) -> CheckpointFormat | None:
    """The first registered format whose ``detect`` accepts ``state``, or None."""
    if not isinstance(state, Mapping):
        return None
    for fmt in registered_formats():
        if fmt.detect(state):
            return fmt
    return None


def _describe_unknown(state: Mapping[str, Any]) -> str:
    arch = saved_arch(state)
    if arch:
        return f"a '{arch}' checkpoint of no format this plugin knows"
    weights = state.get("model")
    if not isinstance(weights, Mapping) and not isinstance(state.get("weights"), Mapping):
        return f"not a fairseq checkpoint (no 'model' entry; top-level keys {sorted(map(str, state))[:8]})"
    return "a checkpoint of no format this plugin knows (no model args and no recognisable weight names)"


def detect_format(state: Mapping[str, Any], path: str | os.PathLike, *, role: str | None = None,
                  flag: str | None = None) -> CheckpointFormat:
    """The format of a loaded checkpoint; with ``role``, refuse a file that cannot serve it, saying where it belongs."""
    fmt = find_format(state)
    wanted = f" as {flag or ROLE_FLAGS.get(role or '', 'a checkpoint')}" if role else ""
    if fmt is None:
        raise CheckpointError(f"{path}: is {_describe_unknown(state)}; cannot use it{wanted}")
    if role is not None and role not in fmt.roles:
        where = " or ".join(ROLE_FLAGS[r] for r in sorted(fmt.roles))
        arch = fmt.implied_arch(state)
        raise CheckpointError(f"{path}: is {fmt.description}{f' (arch {arch})' if arch else ''}, not "
                              f"{ROLE_NOUNS[role]}{wanted} needs; pass it to {where}")
    return fmt


def rewrite_weights(state: dict[str, Any], fmt: CheckpointFormat, report: UpgradeReport) -> None:
    """Apply ``fmt.map_keys`` to ``state[fmt.weights_entry]`` in place, logging every dropped key with its reason."""
    weights = state.get(fmt.weights_entry)
    if not isinstance(weights, dict):
        return
    renames, dropped = fmt.map_keys(list(weights))
    for key, why in dropped.items():
        if key in weights:
            del weights[key]
            report.dropped[key] = why
            report.note(f"dropped {key}: {why}")
    moved = {ours: theirs for ours, theirs in renames.items() if ours != theirs}
    if moved:
        values = {theirs: weights.pop(theirs) for theirs in moved.values()}
        for ours, theirs in moved.items():
            weights[ours] = values[theirs]
            report.renamed[theirs] = ours
        report.note(f"renamed {len(moved)} tensors to this plugin's names (e.g. {next(iter(moved.values()))} -> "
                    f"{next(iter(moved))})")


def upgrade_to_native(state: dict[str, Any], path: str | os.PathLike) -> UpgradeReport | None:
    """Recognise a loaded checkpoint and, for a foreign ST format, rewrite it in memory as a native one.

    Returns None for files of no registered format (fairseq may read anything; those are left alone). Idempotent:
    upgrading an upgraded state changes nothing more. The report is also kept for :func:`last_upgrade`.
    """
    fmt = find_format(state)
    if fmt is None:
        return None
    report = UpgradeReport(str(path), fmt)
    arch = fmt.implied_arch(state)
    logger.info(f"{path}: recognised as {fmt.description}" + (f" (architecture {arch})" if arch else ""))
    if fmt.upgrade is not None:
        fmt.upgrade(state, report)
    report.args = saved_model_args(state)
    _RECENT[os.path.realpath(str(path))] = report
    return report


def last_upgrade(path: str | os.PathLike) -> UpgradeReport | None:
    """The report of the last :func:`upgrade_to_native` of ``path`` in this process (for the trainer's restore)."""
    return _RECENT.get(os.path.realpath(str(path)))
