"""Make fairseq's own distributed engine work on CPU hosts (gloo), as it does with NCCL on GPUs.

fairseq 0.12 assumes GPUs when it reads a ``torchrun`` environment: the world size defaults to the GPU count (so a
CPU run never becomes distributed), ``device_id = rank % torch.cuda.device_count()`` divides by zero, the default
backend is NCCL, and ``--ddp-backend c10d`` passes ``device_ids=[0]`` to DistributedDataParallel, which refuses CPU
modules. These wrappers change nothing when CUDA is available.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def _cpu_torchrun(cfg: Any) -> bool:
    if torch.cuda.is_available() or cfg.distributed_init_method is not None:
        return False
    return all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def install_cpu_distributed_fixes() -> None:
    from fairseq import models
    from fairseq.distributed import utils as dist_utils
    from fairseq.distributed.module_proxy_wrapper import ModuleProxyWrapper

    if getattr(dist_utils.infer_init_method, "_cress_bitnet_cpu", False):
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

    infer_init_method._cress_bitnet_cpu = True  # type: ignore[attr-defined]
    dist_utils.infer_init_method = infer_init_method

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
