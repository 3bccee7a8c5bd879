"""Let fairseq's ``--fp16`` mixed-precision optimizer run on CPU hosts.

fairseq's ``FP16Optimizer`` (fp16 model, fp32 master copy, dynamic loss scaling) needs no GPU in principle, but
``_FP16OptimizerMixin.build_fp32_params`` flattens the fp32 master copy for ``torch.cuda.current_device()``, so
``fairseq-train --fp16 --cpu`` dies before the first update. The rest of the mixin groups parameters by
``p.device.index`` (``None`` for a CPU tensor), so a flat master copy keyed by ``None`` is all it takes. The wrapper
below builds exactly that when every parameter lives on the CPU and defers to fairseq otherwise: CUDA and pipeline
runs are untouched. A second CUDA-only line sits in ``Trainer.train_step``'s overflow handler
(``grad_norm = torch.tensor(0.0).cuda()``, a value it then discards), so the first gradient overflow of a CPU fp16
run would crash instead of halving the loss scale and skipping the update; while a CPU trainer (``trainer.cuda``
False) runs ``train_step``, ``Tensor.cuda`` is the identity.

Why it matters: the SVCD paper's point is fp16 trainability (constraint init vs BitNet and the unconstrained init);
with this the loss-scale dynamics can be observed without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch


def flat_fp32_master(params: list[torch.Tensor]) -> dict[None, torch.nn.Parameter]:
    """One flat fp32 copy of ``params`` (in order) with a zeroed flat grad, keyed by the CPU device index (None)."""
    flat = torch.cat([p.data.reshape(-1).float() for p in params]) if params else torch.zeros(0)
    master = torch.nn.Parameter(flat)
    master.grad = torch.zeros_like(flat)
    return {None: master}


@contextlib.contextmanager
def cuda_is_identity() -> Iterator[None]:
    """Within the block ``tensor.cuda()`` returns the tensor itself (for a CPU trainer's train_step only)."""
    original = torch.Tensor.cuda

    def cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.cuda = cuda  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _patch_train_step() -> None:
    from fairseq.trainer import Trainer

    if getattr(Trainer.train_step, "_cress_bitnet_cpu", False):
        return
    original = Trainer.train_step

    @functools.wraps(original)
    def train_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.cuda or self.tpu:
            return original(self, *args, **kwargs)
        with cuda_is_identity():
            return original(self, *args, **kwargs)

    train_step._cress_bitnet_cpu = True  # type: ignore[attr-defined]
    Trainer.train_step = train_step


def install_cpu_fp16_fixes() -> None:
    """Patch ``FP16Optimizer.build_fp32_params`` to flatten on CPU and the trainer's overflow path (idempotent)."""
    from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin

    _patch_train_step()

    current = _FP16OptimizerMixin.__dict__["build_fp32_params"]
    if getattr(current.__func__, "_cress_bitnet_cpu", False):
        return
    original = current.__func__

    def build_fp32_params(cls: type, args: Any, params: list[torch.Tensor], flatten: bool = True) -> Any:
        pipeline = getattr(args, "pipeline_model_parallel", False) and getattr(args, "distributed_no_spawn", False)
        on_cpu = bool(params) and all(p.device.type == "cpu" for p in params)
        if flatten and on_cpu and not pipeline:
            return flat_fp32_master(list(params))
        return original(cls, args, params, flatten)

    build_fp32_params._cress_bitnet_cpu = True  # type: ignore[attr-defined]
    _FP16OptimizerMixin.build_fp32_params = classmethod(build_fp32_params)
