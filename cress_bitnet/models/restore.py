"""Which checkpoint fairseq-train is about to restore, known before the model is built.

fairseq builds the model from the command line first and loads ``--restore-file`` (default
``SAVE_DIR/checkpoint_last.pt``) afterwards. A model whose structure depends on training history — quantized layers,
a budget plan — must rebuild that structure from the checkpoint being restored, not from the command line (which may
name an FP checkpoint that no longer exists).
"""

from __future__ import annotations

import os
from argparse import Namespace

from cress_bitnet.checkpoints import load_checkpoint, saved_model_args, upgrade_to_native


def restore_path(args: Namespace) -> str:
    """fairseq's rule: ``checkpoint_last.pt`` means the one in ``--save-dir``; any other value is a path."""
    restore = getattr(args, "restore_file", None) or "checkpoint_last.pt"
    if restore == "checkpoint_last.pt":
        return os.path.join(getattr(args, "save_dir", None) or "checkpoints", restore)
    return restore


def args_to_resume(args: Namespace) -> Namespace | None:
    """The saved model args of the checkpoint fairseq-train will restore, or None when there is none."""
    path = restore_path(args)
    if not os.path.isfile(path):
        return None
    state = load_checkpoint(path, what="checkpoint to resume", flag="--restore-file")
    upgrade_to_native(state, path)  # what fairseq's own loader will see (e.g. an onebit-st file's quant record)
    return saved_model_args(state)
