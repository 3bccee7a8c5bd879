"""Every change this plugin makes to fairseq itself, in one place, installed once by :func:`install` (called from
``cress_bitnet/__init__.py``; idempotent).

1. **Checkpoint loads** (``checkpoint_utils.load_checkpoint_to_cpu``: trainer restore, ``fairseq-generate``,
   ``load_pretrained_component_from_model``): refused while ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (fairseq passes
   no ``weights_only``, so that variable would make torch unpickle arbitrary code); unpickling/truncation errors are
   re-raised naming the file; and every loaded state goes through the format registry's upgrade
   (:func:`cress_bitnet.checkpoints.upgrade_to_native`), so CRESS / onebit-st files load wherever a checkpoint is
   accepted.
2. **Trainer restore**: after ``--restore-file`` the task may check the restored checkpoint's saved args
   (``task.checkpoint_restored(saved_args, report)`` when the task defines it); an optimizer state that cannot fit
   because the upgrade dropped parameters fails with the flag to pass (``--reset-optimizer``).
3. **Crash safety**: fairseq saves ``checkpointN.pt`` atomically but then *copies* it to ``checkpoint_last.pt`` with a
   plain ``shutil.copyfile``; a kill during that copy leaves a truncated ``checkpoint_last.pt``. Local copies become
   copy-to-temp + atomic rename.
4. **Distributed training on CPU hosts** (gloo), which fairseq 0.12 gets wrong when it reads a ``torchrun``
   environment: world size from the GPU count, ``rank % cuda.device_count()`` (division by zero), NCCL by default,
   and ``device_ids=[0]`` for ``--ddp-backend c10d``. These change nothing when CUDA is available.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from typing import Any

import torch

from cress_bitnet.checkpoints import (
    CheckpointError,
    explain_load_error,
    last_upgrade,
    refuse_unsafe_environment,
    register_safe_globals,
    safetensors_format,
    upgrade_to_native,
)
from cress_bitnet.fileio import atomic_output

logger = logging.getLogger(__name__)

TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
_MARK = "_cress_bitnet_patch"


def _marked(fn: Any) -> bool:
    return bool(getattr(fn, _MARK, False))


def _mark(fn: Any) -> Any:
    setattr(fn, _MARK, True)
    return fn


# ---------------------------------------------------------------- 1. checkpoint loads


def patch_checkpoint_loading() -> None:
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if _marked(original):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):  # type: ignore[no-untyped-def]
        refuse_unsafe_environment(path)
        if safetensors_format.is_safetensors(path):  # packed export without pickle (cress-bitnet-export --format)
            state = safetensors_format.fairseq_load_checkpoint(path, arg_overrides)
            upgrade_to_native(state, path)
            return state
        try:
            state = original(path, arg_overrides, load_on_all_ranks)
        except FileNotFoundError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, OSError) as err:
            raise explain_load_error(path, err) from err
        upgrade_to_native(state, path)
        return state

    checkpoint_utils.load_checkpoint_to_cpu = _mark(load_checkpoint_to_cpu)


# ---------------------------------------------------------------- 2. trainer restore


def patch_trainer_restore() -> None:
    from fairseq.trainer import Trainer

    original = Trainer.load_checkpoint
    if _marked(original):
        return

    @functools.wraps(original)
    def load_checkpoint(self, filename, reset_optimizer=False, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            result = original(self, filename, reset_optimizer, *args, **kwargs)
        except Exception as err:
            report = last_upgrade(filename)
            # torch: "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
            optimizer_mismatch = "parameter group" in str(err)
            if report is not None and report.dropped and optimizer_mismatch and not reset_optimizer:
                raise CheckpointError(
                    f"{filename} ({report.format.description}): cannot restore its optimizer state: it holds state for "
                    f"tensors this plugin does not build ({', '.join(report.dropped)}); pass --reset-optimizer "
                    f"(original error: {str(err).splitlines()[0] if str(err) else type(err).__name__})"
                ) from err
            raise
        report = last_upgrade(filename)
        hook = getattr(self.task, "checkpoint_restored", None)
        if report is not None and callable(hook):
            hook(report, self.model)
        return result

    Trainer.load_checkpoint = _mark(load_checkpoint)


# ---------------------------------------------------------------- 3. crash-safe checkpoint_last.pt


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """Copy through a temporary file and an atomic rename, so a kill mid-copy never leaves a truncated file."""
    if os.path.exists(dst_path) and not overwrite:
        return False
    with atomic_output(dst_path) as tmp:
        shutil.copyfile(src_path, tmp)
    return True


def patch_atomic_copy() -> None:
    from fairseq.file_io import PathManager

    original_copy = PathManager.copy
    if _marked(original_copy):
        return

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path):
            return original_copy(src_path, dst_path, overwrite)
        return atomic_copy(src_path, dst_path, overwrite)

    PathManager.copy = staticmethod(_mark(copy))


# ---------------------------------------------------------------- 4. distributed training on CPU


def _cpu_torchrun(cfg: Any) -> bool:
    if torch.cuda.is_available() or cfg.distributed_init_method is not None:
        return False
    return all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def patch_cpu_distributed() -> None:
    from fairseq import models
    from fairseq.distributed import utils as dist_utils
    from fairseq.distributed.module_proxy_wrapper import ModuleProxyWrapper

    if _marked(dist_utils.infer_init_method):
        return
    original_infer = dist_utils.infer_init_method

    def infer_init_method(cfg: Any, force_distributed: bool = False) -> None:
        if not _cpu_torchrun(cfg):
            return original_infer(cfg, force_distributed)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = int(os.environ.get("LOCAL_RANK", 0))
        cfg.distributed_no_spawn = True  # torchrun made the processes
        if cfg.distributed_backend == "nccl":
            logger.info("no CUDA device: using the gloo backend for torch.distributed")
            cfg.distributed_backend = "gloo"
        return None

    dist_utils.infer_init_method = _mark(infer_init_method)

    original_wrap = models.DistributedFairseqModel

    def DistributedFairseqModel(args: Any, model: torch.nn.Module, process_group: Any, device: torch.device) -> Any:  # noqa: N802
        if device.type == "cpu" and args.ddp_backend in {"c10d", "pytorch_ddp"}:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                module=model.to(device),
                broadcast_buffers=args.broadcast_buffers,
                bucket_cap_mb=args.bucket_cap_mb,
                process_group=process_group,
                find_unused_parameters=args.find_unused_parameters,
                gradient_as_bucket_view=args.gradient_as_bucket_view,
            )
            return ModuleProxyWrapper(wrapped)
        return original_wrap(args, model, process_group, device)

    models.DistributedFairseqModel = DistributedFairseqModel


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


def patch_cpu_fp16() -> None:
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


def install() -> None:
    """Install every patch above (needs fairseq; safe to call more than once)."""
    register_safe_globals()
    patch_checkpoint_loading()
    patch_trainer_restore()
    patch_atomic_copy()
    patch_cpu_distributed()
    patch_cpu_fp16()

