"""Arch ``quant_transformer``: continue training a trained FP speech-translation model with quantized linear layers.

The FP model (``--pretrained-st-checkpoint``) fixes the architecture and supplies every weight; the layers named by
``--quant-targets`` are swapped by :func:`cress_bitnet.quantization.quantize_` with the method's config built from
the flags (or per layer by the memory-budget planner). The resulting :class:`QuantRecord` is stored in the model args,
so a saved checkpoint — and a resumed run — rebuilds from the checkpoint alone (no FP, HuBERT or MT file needed).

Attention modules with a swapped projection leave fairseq's ``F.multi_head_attention_forward`` fast path, which
uses the raw projection weights outside incremental decoding and would bypass a swapped projection in training.
"""

from __future__ import annotations

import logging
from argparse import ArgumentParser, Namespace
from typing import Any

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.modules.multihead_attention import MultiheadAttention
from torch import nn

from cress_bitnet.models.hubert_transformer import (
    ARCH_FIELDS,
    TRAINING_FIELDS,
    HubertTransformerModel,
    hubert_transformer_base,
)
from cress_bitnet.models.restore import args_to_resume
from cress_bitnet.models.st_checkpoint import build_fp_model
from cress_bitnet.quantization import METHODS, QuantRecord, linear_deploy_bytes, make_config
from cress_bitnet.quantization.base import check_finite_quantizers
from cress_bitnet.quantization.calibration import quantize_calibrated_
from cress_bitnet.quantization.planner import plan_for_budget
from cress_bitnet.quantization.presets import TARGET_PRESETS, expand_targets
from cress_bitnet.quantization.registry import generic_flags
from cress_bitnet.quantization.surgery import plain_linears, select_modules

logger = logging.getLogger(__name__)


@register_model("quant_transformer")
class QuantTransformerModel(HubertTransformerModel):
    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        HubertTransformerModel.add_args(parser)
        a = parser.add_argument
        a("--pretrained-st-checkpoint", help="trained FP hubert_transformer checkpoint to start from")
        a("--quant-method", choices=sorted(METHODS), help="quantizer (default svcd)")
        for flag, spec in generic_flags().items():
            a("--" + flag.replace("_", "-"), type=spec["type"], choices=spec["choices"], help=spec["help"])
        a("--quant-targets", help="presets (" + ", ".join(TARGET_PRESETS) + ") or fnmatch patterns, comma separated")
        a("--quant-budget-mb", type=float, help="methods with --quant-bits: fit the swapped layers into this many MB")
        a("--quant-calib-samples", type=int, help="unlabeled training utterances (budget planner, calibrated init)")
        a("--quant-record", help="(internal) JSON quantization record: per-module configs, packed or not")

    @classmethod
    def build_model(cls, args: Namespace, task: Any) -> QuantTransformerModel:
        quant_transformer(args)
        record, source = QuantRecord.from_args(args), None
        if record is None and (source := args_to_resume(args)) is not None and QuantRecord.from_args(source):
            record = QuantRecord.from_args(source)  # a resumed run: rebuild what the checkpoint holds
            logger.info("quant_transformer: rebuilding the quantized model recorded in the checkpoint being resumed")
            for name in (*ARCH_FIELDS, *TRAINING_FIELDS):
                setattr(args, name, getattr(source, name, None))
        if record is not None:
            if args.quant_act:  # an inference-time option may change on a restored model (e.g. seed -> per_token)
                record = record.with_options(act_quant=args.quant_act)
            hubert_transformer_base(args)
            args.load_pretrained_mt_encoder_decoder_from = None  # every weight comes from the checkpoint
            model = super().build_model(args, task)
            use_module_path_attention(model, record.apply(model))
        else:
            model = cls.quantize_pretrained(args, task)
            record = QuantRecord.of_model(model)
        record.store(args)
        model.log_quantization(record)
        return model

    @classmethod
    def quantize_pretrained(cls, args: Namespace, task: Any) -> QuantTransformerModel:
        if not args.pretrained_st_checkpoint:
            raise ValueError("--arch quant_transformer needs --pretrained-st-checkpoint (a trained FP ST checkpoint)")
        fp, fp_args = build_fp_model(args.pretrained_st_checkpoint, task, flag="--pretrained-st-checkpoint",
                                     overrides=args)
        for name in (*ARCH_FIELDS, *TRAINING_FIELDS):
            setattr(args, name, getattr(fp_args, name))
        model = cls(fp.encoder, fp.decoder)
        flags = {spec["option"]: getattr(args, flag, None) for flag, spec in generic_flags().items()}
        config, ignored = make_config(args.quant_method, **flags)
        if ignored:
            logger.warning(f"quant_transformer: {ignored} (--quant-*) do not apply to {args.quant_method}; ignored")
        targets = expand_targets(args.quant_targets)
        run = lambda: calibrate(model, task, args.quant_calib_samples)  # noqa: E731  (unlabeled; planner + init)
        if args.quant_budget_mb:
            names = select_modules(plain_linears(model), targets)
            config, targets = plan_for_budget(model, names, config, args.quant_budget_mb, run), None
        quantize_calibrated_(model, config, targets, run, lambda names: use_module_path_attention(model, names))
        return model

    def upgrade_state_dict_named(self, state_dict: dict, name: str) -> None:
        """fairseq's decoder upgrade copies ``embed_tokens.weight`` into ``output_projection.weight`` when the two
        are shared (``share_decoder_input_output_embed``, e.g. ``hubert_deltalm_base``); a packed 1-bit output
        projection (``--quant-targets ...,output``) holds no such tensor, so that copy is removed again."""
        super().upgrade_state_dict_named(state_dict, name)
        key = f"{name}.decoder.output_projection.weight" if name else "decoder.output_projection.weight"
        projection = self.decoder.output_projection
        own = {n for n, _ in projection.named_parameters(recurse=False)} | \
              {n for n, _ in projection.named_buffers(recurse=False)}
        if key in state_dict and "weight" not in own:
            del state_dict[key]

    def load_state_dict(self, state_dict: Any, strict: bool = True, model_cfg: Any = None, args: Any = None) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        check_finite_quantizers(self)  # a NaN in g, h or a scale would only show up as empty translations
        return result

    def log_quantization(self, record: QuantRecord) -> None:
        logger.info(f"quant_transformer: {len(record.modules)} modules swapped for {', '.join(record.methods())}: "
                    f"{record.summary()}; decoder linears {sum(linear_deploy_bytes(self).values()) / 1024:.1f} KiB")


def use_module_path_attention(model: nn.Module, swapped: list[str]) -> None:
    """Route attention whose projections were swapped through the projection modules in every mode."""
    modules = dict(model.named_modules())
    for name in swapped:
        parent = name.rsplit(".", 1)[0]
        if isinstance(modules.get(parent), MultiheadAttention):
            modules[parent].skip_embed_dim_check = True


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
        generator.generate([model], dataset.collater(items[start:start + 8]))
    model.train(was_training)


@register_model_architecture("quant_transformer", "quant_transformer")
def quant_transformer(args: Namespace) -> None:
    """Only quantization defaults: the architecture itself comes from --pretrained-st-checkpoint."""
    for name, value in (("quant_method", "svcd"), ("quant_targets", "cross_attn"), ("quant_calib_samples", 32)):
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    for name in ("pretrained_st_checkpoint", "quant_budget_mb", "quant_record", *generic_flags()):
        if not hasattr(args, name):
            setattr(args, name, None)


@register_model_architecture("quant_transformer", "quant_transformer_postln")
def quant_transformer_postln(args: Namespace) -> None:  # onebit-st's name; the FP checkpoint fixes the LN placement
    quant_transformer(args)
