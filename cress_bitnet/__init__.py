"""cress_bitnet: a fairseq user dir (``--user-dir cress_bitnet``) for speech translation with 1-bit decoders.

Importing it registers the checkpoint allowlist (so fairseq's own ``torch.load`` calls work with
``weights_only=True``) and, when fairseq is installed, installs the plugin's fairseq patches
(:func:`cress_bitnet.fairseq_patches.install`) and registers the task, criteria and models. The quantization library
(``cress_bitnet.quantization``) is plain PyTorch and works without fairseq.
"""

import importlib.util

from cress_bitnet.checkpoints import register_safe_globals

__version__ = "0.1.0"

register_safe_globals()

if importlib.util.find_spec("fairseq") is not None:
    from cress_bitnet import fairseq_patches

    fairseq_patches.install()
    from cress_bitnet import criterions, models, tasks  # noqa: F401  (registration side effects)
