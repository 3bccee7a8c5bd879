"""Checkpoints: safe loading (``weights_only=True`` + an allowlist), the saved model args, and a registry of formats.

* :mod:`.safe` -- :func:`load_checkpoint`, :class:`CheckpointError`, the allowlist, the refusal of
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``;
* :mod:`.args` -- :func:`saved_model_args` (``cfg["model"]`` or legacy ``args``);
* :mod:`.formats` -- :class:`CheckpointFormat`, :func:`register_format`, :func:`detect_format`,
  :func:`upgrade_to_native`;
* :mod:`.builtin` -- the formats known out of the box (HuBERT, fairseq MT, DeltaLM, ours, CRESS, onebit-st).

The fairseq side (making fairseq's own loads go through the upgrade) lives in :mod:`cress_bitnet.fairseq_patches`.
"""

from cress_bitnet.checkpoints.args import saved_arch, saved_model_args
from cress_bitnet.checkpoints.builtin import (
    HUBERT_FLAG_HINT,
    PRETRAINING_ONLY_PREFIXES,
    QUANT_RECORD_ARG,
    STANDARDIZED_AUDIO_ARG,
    audio_standardization,
    seed_svcd_record,
)
from cress_bitnet.checkpoints.formats import (
    ROLE_FLAGS,
    CheckpointFormat,
    UpgradeReport,
    detect_format,
    find_format,
    get_format,
    last_upgrade,
    register_format,
    registered_formats,
    rewrite_weights,
    unregister_format,
    upgrade_to_native,
)
from cress_bitnet.checkpoints.safe import (
    UNSAFE_ENV,
    CheckpointError,
    explain_load_error,
    load_checkpoint,
    refuse_unsafe_environment,
    register_safe_globals,
    safe_globals,
)

__all__ = [
    "HUBERT_FLAG_HINT", "PRETRAINING_ONLY_PREFIXES", "QUANT_RECORD_ARG", "ROLE_FLAGS", "STANDARDIZED_AUDIO_ARG",
    "UNSAFE_ENV", "CheckpointError", "audio_standardization", "CheckpointFormat", "UpgradeReport", "detect_format",
    "explain_load_error", "find_format", "get_format", "last_upgrade", "load_checkpoint", "refuse_unsafe_environment",
    "register_format", "register_safe_globals", "registered_formats", "rewrite_weights", "safe_globals", "saved_arch",
    "saved_model_args", "seed_svcd_record", "unregister_format", "upgrade_to_native",
]
