"""cress_bitnet: a fairseq user dir (``--user-dir cress_bitnet``) for speech translation with 1-bit decoders.

Importing it registers the checkpoint allowlist (so fairseq's own ``torch.load`` calls work with
``weights_only=True``) and, when fairseq is installed, the task, criterion and models. The quantization library
(``cress_bitnet.quantization``) is plain PyTorch and works without fairseq.
"""

import importlib.util

from cress_bitnet.checkpoints import install_fairseq_fixes, register_safe_globals

__version__ = "0.1.0"

register_safe_globals()

if importlib.util.find_spec("fairseq") is not None:
    install_fairseq_fixes()
    from cress_bitnet.distributed import install_cpu_distributed_fixes

    install_cpu_distributed_fixes()
    from cress_bitnet.fairseq_fp16 import install_cpu_fp16_fixes

    install_cpu_fp16_fixes()
    from cress_bitnet import criterions, models, tasks  # noqa: F401  (registration side effects)
