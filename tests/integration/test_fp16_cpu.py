"""Issue 15 item 4: fairseq's --fp16 and --memory-efficient-fp16 training paths run on a CPU.

fairseq's FP16Optimizer flattens its fp32 master copy on ``torch.cuda.current_device()``; the plugin's patch
(``cress_bitnet.fairseq_patches``) builds it on the CPU instead. These runs go through ``fairseq-train`` itself.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ToyData, fairseq, output, quant_train_args
from fairseq.optim.fp16_optimizer import FP16Optimizer

import cress_bitnet  # noqa: F401  (installs the patch)
from cress_bitnet.fairseq_patches import flat_fp32_master


def test_flat_master_is_a_cpu_copy_keyed_like_fairseqs_sync() -> None:
    params = [torch.randn(3, 2).half(), torch.randn(5).half()]
    master = FP16Optimizer.build_fp32_params(None, params, flatten=True)
    assert list(master) == [None]  # the key fairseq's sync loops compute from p.device.index on CPU
    flat = master[None]
    assert flat.dtype == torch.float32 and flat.device.type == "cpu" and flat.numel() == 11
    assert torch.equal(flat.data, torch.cat([p.float().reshape(-1) for p in params]))
    assert flat.grad is not None and flat.grad.shape == flat.shape and not flat.grad.any()
    unflat = FP16Optimizer.build_fp32_params(None, params, flatten=False)  # fairseq's own path, unchanged
    assert isinstance(unflat, list) and [p.shape for p in unflat] == [p.shape for p in params]
    assert flat_fp32_master([])[None].numel() == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu_check.sh)")
def test_cuda_params_keep_fairseqs_own_flat_copy() -> None:
    params = [torch.randn(3, 2, device="cuda").half(), torch.randn(5, device="cuda").half()]
    master = FP16Optimizer.build_fp32_params(None, params, flatten=True)
    assert list(master) == [torch.cuda.current_device()]
    assert master[torch.cuda.current_device()].device.type == "cuda"


@pytest.mark.slow
@pytest.mark.parametrize("fp16_flag", ["--fp16", "--memory-efficient-fp16"])
def test_fp16_svcd_quant_transformer_trains_on_cpu(fp16_flag: str, toy: ToyData, fp_checkpoint: Path,
                                                   tmp_path: Path) -> None:
    fp = tmp_path / "fp.pt"
    shutil.copy(fp_checkpoint, fp)
    save = tmp_path / "q"
    args = quant_train_args(toy, fp, save, "--quant-method", "svcd", "--quant-init", "constraint",
                            "--quant-targets", "decoder", "--disable-validation", "--max-update", "4",
                            fp16_flag, "--fp16-init-scale", str(2**17), "--no-epoch-checkpoints")
    log = output(fairseq("train", args))
    # 2^17 times a loss of ~5 is past fp16's 65504: the first steps overflow, are skipped and halve the scale (the
    # trainer's overflow handler must not need CUDA), then training goes on.
    overflows = re.findall(r"gradient overflow detected, ignoring gradient, setting loss scale to: ([\d.]+)", log)
    assert overflows and float(overflows[0]) == 2**16, log[-3000:]
    scales = [float(s) for s in re.findall(r"loss_scale=([\d.]+)", log)]
    assert len(scales) >= 4 and max(scales) < 2**17, log[-3000:]
    assert "num_updates: 4 >= max_update: 4" in log or "done training" in log
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    model = state["model"]  # fairseq saves the fp16 model cast back to fp32
    assert state["cfg"]["common"]["fp16"] or state["cfg"]["common"]["memory_efficient_fp16"]
    opt = state["last_optimizer_state"]
    assert opt["loss_scale"] > 0
    exp_avg = [s["exp_avg"] for s in opt["state"].values()]
    if fp16_flag == "--fp16":
        # One flat fp32 master tensor on the CPU (the patched path), updated by Adam.
        assert len(exp_avg) == 1 and exp_avg[0].dtype == torch.float32 and exp_avg[0].dim() == 1
    assert all(t.dtype == torch.float32 for t in exp_avg)
    assert sum(int(t.count_nonzero()) for t in exp_avg) > 0
    steps = {float(s["step"]) for s in opt["state"].values()}
    assert steps and max(steps) >= 1
    # The model moved away from the FP start (rounded to fp16 as the trainer did): master updates reached it.
    start = torch.load(fp, map_location="cpu", weights_only=True)["model"]
    moved = [k for k in model if k.startswith("decoder.") and k in start and model[k].is_floating_point()
             and model[k].shape == start[k].shape and not torch.equal(model[k], start[k].half().float())]
    assert moved, "no decoder tensor changed after fp16 updates"
