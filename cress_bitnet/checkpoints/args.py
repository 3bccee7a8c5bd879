"""The model arguments a fairseq checkpoint was saved with, from either layout.

fairseq writes them in two places: legacy checkpoints hold ``args`` (an ``argparse.Namespace``), trainer checkpoints
hold ``cfg["model"]`` -- a Namespace for legacy (argparse) architectures such as ``hubert_transformer``, or a config
dict for dataclass models such as HuBERT. Every reader of saved args goes through :func:`saved_model_args`.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any


def _get(container: Any, key: str) -> Any:
    if container is None:
        return None
    if isinstance(container, Mapping) or hasattr(container, "get"):
        try:
            return container.get(key)
        except Exception:  # noqa: BLE001 - omegaconf raises for missing struct keys
            return None
    return getattr(container, key, None)


def _as_plain_dict(model: Any) -> dict[str, Any] | None:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(model):
            return OmegaConf.to_container(model, resolve=False, enum_to_str=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf ships with fairseq
        pass
    return dict(model) if isinstance(model, Mapping) else None


def saved_model_args(state: Mapping[str, Any]) -> Namespace | None:
    """The saved model args: ``cfg["model"]`` (trainer layout) or ``args`` (legacy layout); None when neither exists.

    A Namespace is returned as stored, so setting an attribute on it rewrites the checkpoint's args in memory (the
    format upgrades rely on this). A dict-valued ``cfg["model"]`` (dataclass models) comes back as a new Namespace
    over a copy of its fields.
    """
    model = _get(_get(state, "cfg"), "model")
    if isinstance(model, Namespace):
        return model
    args = _get(state, "args")
    if isinstance(args, Namespace):
        return args
    plain = _as_plain_dict(model) if model is not None else None
    return Namespace(**plain) if plain is not None else None


def saved_arch(state: Mapping[str, Any]) -> str | None:
    """The architecture name in the saved args (``arch``, else the dataclass ``_name``)."""
    args = saved_model_args(state)
    if args is None:
        return None
    return getattr(args, "arch", None) or getattr(args, "_name", None)
