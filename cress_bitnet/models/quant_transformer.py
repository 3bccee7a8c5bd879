"""Arch ``quant_transformer``: continue training a trained FP speech-translation model with quantized linear layers.

The FP model (``--pretrained-st-checkpoint``) fixes the architecture and supplies every weight; then the layers named
by ``--quant-targets`` are swapped through :func:`cress_bitnet.quantization.quantize_model`, which copies the trained
weights into the quantized layers. What was swapped (names, method, options, per-layer bits) is stored in the model
args, so the saved checkpoint rebuilds and decodes with neither the FP checkpoint, the HuBERT file nor the teacher.

fairseq's ``MultiheadAttention`` calls ``F.multi_head_attention_forward`` with the raw projection weights whenever
there is no incremental state, which would bypass a swapped self-attention projection in training while beam search
used it. Attention modules with a swapped projection are switched to the module path (``skip_embed_dim_check``).
"""

from __future__ import annotations

import json
import logging
import os
from argparse import ArgumentParser, Namespace
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn.functional as F
from fairseq.models import register_model, register_model_architecture
from fairseq.modules.multihead_attention import MultiheadAttention
from torch import Tensor, nn

from cress_bitnet.checkpoints import CheckpointError, load_checkpoint
from cress_bitnet.models.hubert_transformer import (
    ARCH_FIELDS,
    TRAINING_FIELDS,
    HubertTransformerModel,
    hubert_transformer_base,
)
from cress_bitnet.models.st_checkpoint import build_fp_model, st_model_args
from cress_bitnet.quantization import QUANTIZERS, QuantLinear, linear_deploy_bytes, quantize_model
from cress_bitnet.quantization.planner import activation_medians, select_bits
from cress_bitnet.quantization.surgery import OUTPUT_HEADS

logger = logging.getLogger(__name__)

ATTN = ("q", "k", "v", "out")
TARGET_PRESETS: dict[str, list[str]] = {
    "cross_attn": [f"decoder.layers.*.encoder_attn.{p}_proj" for p in ATTN],
    **{f"cross_attn.{p}": [f"decoder.layers.*.encoder_attn.{p}_proj"] for p in ATTN},
    "self_attn": [f"decoder.layers.*.self_attn.{p}_proj" for p in ATTN],
    "ffn": [f"decoder.layers.*.fc{i}" for i in range(1, 5)],
    "decoder": ["decoder.*"],
    "encoder": ["encoder.transformer_layers.*"],
    "all": ["encoder.transformer_layers.*", "decoder.*"],
}
# Generic flags → layer options; each quantizer takes the ones in its OPTIONS.
FLAG_OPTIONS = {"quant_init": "init", "quant_groups": "num_groups", "quant_bits": "bits", "quant_act": "act_quant"}
BIT_RANGES = {"bcq": (1, 4), "minmax": (2, 8)}


def expand_targets(spec: str) -> list[str]:
    """``--quant-targets``: comma-separated presets and/or fnmatch patterns over module names."""
    patterns: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in TARGET_PRESETS:
            patterns += TARGET_PRESETS[item]
        elif any(c in item for c in "*?[") or item.startswith(("encoder.", "decoder.")):
            patterns.append(item)
        else:
            raise ValueError(
                f"--quant-targets: unknown preset '{item}'; presets are {', '.join(TARGET_PRESETS)}, "
                "or give fnmatch patterns over module names (e.g. 'decoder.layers.*.fc1')"
            )
    if not patterns:
        raise ValueError("--quant-targets is empty")
    return patterns


def layer_options(args: Namespace) -> dict[str, Any]:
    cls = QUANTIZERS[args.quant_method]
    options = {}
    for flag, option in FLAG_OPTIONS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if option in cls.OPTIONS:
            options[option] = value
        else:
            logger.warning(f"--{flag.replace('_', '-')} does not apply to --quant-method {args.quant_method}; ignored")
    return options


def use_module_path_attention(model: nn.Module, swapped: list[str]) -> None:
    """Route attention whose projections were swapped through the projection modules in every mode."""
    modules = dict(model.named_modules())
    for name in swapped:
        parent = name.rsplit(".", 1)[0]
        if isinstance(modules.get(parent), MultiheadAttention):
            modules[parent].skip_embed_dim_check = True


def swap_layers(model: nn.Module, method: str, names_or_patterns: list[str], options: dict[str, Any],
                plan: dict[str, int] | None = None) -> list[str]:
    """Swap with one option set, or per layer with the bit widths of a mixed-precision ``plan``."""
    if plan:
        swapped = []
        for bits in sorted(set(plan.values())):
            names = sorted(n for n, b in plan.items() if b == bits)
            swapped += quantize_model(model, method, names, **{**options, "bits": bits})
        swapped.sort()
    else:
        swapped = quantize_model(model, method, names_or_patterns, **options)
    use_module_path_attention(model, swapped)
    return swapped


@register_model("quant_transformer")
class QuantTransformerModel(HubertTransformerModel):
    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        HubertTransformerModel.add_args(parser)
        a = parser.add_argument
        a("--pretrained-st-checkpoint", help="trained FP hubert_transformer checkpoint to start from")
        a("--quant-method", choices=sorted(QUANTIZERS), help="quantizer (default svcd)")
        a("--quant-init", choices=["constraint", "unconstrained", "svd", "signvalue"],
          help="SVCD g/h init (default constraint; signvalue: function-preserving sign x rank-1 |W| fit)")
        a("--quant-groups", type=int, help="weight groups over output rows (svcd, bitnet)")
        a("--quant-bits", type=int, help="bits (bcq: 1-4, minmax: 2-8)")
        a("--quant-act", choices=["per_token", "seed", "none"], help="activation quantizer (default per_token)")
        a("--quant-targets", help="presets (" + ", ".join(TARGET_PRESETS) + ") or fnmatch patterns, comma separated")
        a("--kd-weight", type=float, help="weight of KL(teacher || student) (default 0: no distillation)")
        a("--kd-teacher", help="teacher checkpoint (default: --pretrained-st-checkpoint)")
        a("--quant-budget-mb", type=float, help="bcq/minmax: fit the swapped layers into this many MB")
        a("--quant-calib-samples", type=int, help="unlabeled training utterances for the budget planner")
        a("--quant-modules", help="(internal) JSON list of the swapped modules")
        a("--quant-options", help="(internal) JSON layer options")
        a("--quant-plan", help="(internal) JSON bits per module of the budget plan")
        a("--quant-packed", action="store_true", help="(internal) weights are stored packed (cress-bitnet-export)")

    @classmethod
    def build_model(cls, args: Namespace, task: Any) -> QuantTransformerModel:
        quant_transformer(args)
        if args.quant_modules:  # a saved quant_transformer: rebuild the same structure, its state dict follows
            hubert_transformer_base(args)
            model = super().build_model(args, task)
            names = json.loads(args.quant_modules)
            swap_layers(model, args.quant_method, names, json.loads(args.quant_options or "{}"),
                        json.loads(args.quant_plan) if args.quant_plan else None)
            if args.quant_packed:
                from cress_bitnet.quantization.packed import pack_model

                pack_model(model, skeleton=True)  # buffers of the right shapes; the packed state dict follows
            model.quantized_modules = names
            model.init_distillation(args, task)
            return model
        if not args.pretrained_st_checkpoint:
            raise ValueError("--arch quant_transformer needs --pretrained-st-checkpoint (a trained FP ST checkpoint)")
        fp, fp_args = build_fp_model(args.pretrained_st_checkpoint, task, flag="--pretrained-st-checkpoint",
                                     overrides=args)
        for name in ARCH_FIELDS:
            setattr(args, name, getattr(fp_args, name))
        for name in TRAINING_FIELDS:
            setattr(args, name, getattr(fp_args, name))
        model = cls(fp.encoder, fp.decoder)
        options = layer_options(args)
        targets = expand_targets(args.quant_targets)
        plan = cls.budget_plan(model, args, task, targets, options) if args.quant_budget_mb else None
        names = swap_layers(model, args.quant_method, targets, options, plan)
        args.quant_modules = json.dumps(names)
        args.quant_options = json.dumps(options, sort_keys=True)
        args.quant_plan = json.dumps(plan, sort_keys=True) if plan else None
        model.quantized_modules = names
        model.log_quantization(args)
        model.init_distillation(args, task)
        return model

    # ---- reporting ----------------------------------------------------------------------------------------------
    def log_quantization(self, args: Namespace) -> None:
        swapped = {n: m for n, m in self.named_modules() if isinstance(m, QuantLinear)}
        bits = sum(m.deployable_bits() for m in swapped.values())
        fp16 = sum(16 * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)) for m in swapped.values())
        logger.info(f"quant_transformer: {len(swapped)} modules swapped for {args.quant_method}: {', '.join(swapped)}")
        logger.info(f"deployable bits of the swapped layers: {bits} ({bits / 8 / 1024:.1f} KiB, "
                    f"vs {fp16 / 8 / 1024:.1f} KiB in fp16: {fp16 / max(bits, 1):.1f}x smaller); decoder linears: "
                    f"{sum(linear_deploy_bytes(self).values()) / 1024:.1f} KiB")

    # ---- memory-budget mixed precision ----------------------------------------------------------------------------
    @classmethod
    def budget_plan(cls, model: nn.Module, args: Namespace, task: Any, targets: list[str],
                    options: dict[str, Any]) -> dict[str, int]:
        if args.quant_method not in BIT_RANGES:
            raise ValueError(f"--quant-budget-mb needs --quant-method bcq or minmax, not {args.quant_method}")
        min_bits, max_bits = BIT_RANGES[args.quant_method]
        stored = plan_to_resume(args)
        if stored:
            logger.info(f"budget plan taken from the checkpoint being resumed ({len(stored)} layers)")
            return stored
        modules = dict(model.named_modules())
        names = sorted(n for n, m in modules.items() if type(m) is nn.Linear
                       and n.rsplit(".", 1)[-1] not in OUTPUT_HEADS and any(fnmatchcase(n, p) for p in targets))
        if not names:
            raise ValueError(f"--quant-targets {args.quant_targets} matches no linear layer")
        method = QUANTIZERS[args.quant_method]
        size_bits = {n: {b: method.from_linear(modules[n], **{**options, "bits": b}).deployable_bits()
                         for b in range(min_bits, max_bits + 1)} for n in names}
        medians = activation_medians(model, names, lambda: calibrate(model, task, args.quant_calib_samples))
        plan = select_bits(size_bits, medians, int(args.quant_budget_mb * 8 * 2**20), min_bits, max_bits)
        total = sum(size_bits[n][plan[n]] for n in names)
        logger.info(f"budget plan for {len(names)} layers (budget {args.quant_budget_mb} MB, "
                    f"total {total / 8 / 2**20:.4f} MB):")
        for n in names:
            logger.info(f"  {n}: {plan[n]} bits ({size_bits[n][plan[n]] // 8} bytes, median |out| {medians[n]:.4g})")
        return plan

    # ---- distillation -----------------------------------------------------------------------------------------------
    def init_distillation(self, args: Namespace, task: Any) -> None:
        """The teacher lives outside the module tree: not in parameters(), the optimizer or the state dict."""
        self.kd_weight = float(args.kd_weight or 0.0)
        self._teacher: list[nn.Module] = []
        self._teacher_path = args.kd_teacher or args.pretrained_st_checkpoint
        self._task = task

    def teacher(self, like: Tensor) -> nn.Module:
        if not self._teacher:
            if not self._teacher_path or not os.path.exists(self._teacher_path):
                raise CheckpointError(f"KD teacher not found: {self._teacher_path} (set --kd-teacher)")
            teacher, _ = build_fp_model(self._teacher_path, self._task, flag="--kd-teacher")
            teacher.requires_grad_(False).eval()
            self._teacher.append(teacher)
        teacher = self._teacher[0]
        return teacher.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)

    def distillation_loss(self, sample: dict[str, Any], net_output: Any) -> Tensor | None:
        """kd_weight · Σ_tokens KL(teacher ‖ student) over the output vocabulary, pad positions masked."""
        if self.kd_weight <= 0:
            return None
        param = next(self.parameters())
        teacher = self.teacher(param)
        net_input = sample["net_input"]
        with torch.no_grad():
            teacher.eval()
            t_lprobs = teacher.get_normalized_probs(teacher(**net_input), log_probs=True).float()
        s_lprobs = self.get_normalized_probs(net_output, log_probs=True).float()
        kl = F.kl_div(s_lprobs, t_lprobs, log_target=True, reduction="none").sum(-1)
        mask = sample["target"].ne(self.decoder.padding_idx)
        return self.kd_weight * kl[mask].sum()


def plan_to_resume(args: Namespace) -> dict[str, int] | None:
    """When fairseq-train will resume from a checkpoint, reuse its plan instead of re-planning."""
    restore = getattr(args, "restore_file", None) or "checkpoint_last.pt"
    path = os.path.join(args.save_dir, restore) if restore == "checkpoint_last.pt" else restore
    if getattr(args, "reset_optimizer", False) or not os.path.isfile(path):
        return None
    saved = st_model_args(load_checkpoint(path, what="checkpoint to resume", flag="--restore-file"), path,
                        "--restore-file")
    return json.loads(saved.quant_plan) if getattr(saved, "quant_plan", None) else None


@torch.no_grad()
def calibrate(model: nn.Module, task: Any, samples: int) -> None:
    """Label-free: greedy-decode the first ``samples`` training utterances with the model itself."""
    from fairseq.sequence_generator import SequenceGenerator

    dataset = task.speech_dataset(getattr(task.args, "train_subset", "train") or "train", shuffle=False)
    items = [dataset[i] for i in range(min(samples, len(dataset)))]
    was_training = model.training
    model.eval()
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=1, max_len_b=100)
    for start in range(0, len(items), 8):
        batch = dataset.collater(items[start:start + 8])
        generator.generate([model], batch)
    model.train(was_training)


@register_model_architecture("quant_transformer", "quant_transformer")
def quant_transformer(args: Namespace) -> None:
    """Only quantization defaults: the architecture itself comes from --pretrained-st-checkpoint."""

    def default(name: str, value: Any) -> None:
        if getattr(args, name, None) is None:
            setattr(args, name, value)

    default("quant_method", "svcd")
    default("quant_targets", "cross_attn")
    default("kd_weight", 0.0)
    default("quant_calib_samples", 32)
    for name in ("pretrained_st_checkpoint", "quant_init", "quant_groups", "quant_bits", "quant_act", "kd_teacher",
                 "quant_budget_mb", "quant_modules", "quant_options", "quant_plan"):
        default(name, None)
    default("quant_packed", False)
