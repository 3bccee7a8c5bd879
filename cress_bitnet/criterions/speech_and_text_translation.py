"""Criterion ``speech_and_text_translation``: label-smoothed CE on speech translation, plus MT on the transcript.

* ST batches: CE of the translation given the audio; with ``--mt-finetune`` (training only) also CE of the
  translation given the transcript of the same utterances, through the shared text encoder.
* External MT batches (``mode == "ext_mt"``): CE of the translation given the source text.
* ``--ctc-weight W`` (training only) adds W x CTC of the speech encoder output against the transcript. Why: the
  translation loss alone reaches the speech encoder only through cross-attention, so a model whose encoder starts
  from little (a small or random HuBERT) can sit on the decoder's language-model plateau for a long time; CTC gives
  every frame a direct signal. The logits reuse the decoder's output projection (joint dictionary, blank = ``<s>`` as
  in fairseq's CTC criterion), so no parameter is added and checkpoints stay CRESS-compatible.
* ``--kd-weight W`` (training only) adds W x sum over target tokens of KL(teacher || student) over the vocabulary
  (Hinton et al. 2015, "Distilling the knowledge in a neural network"; word-level KD as in Kim & Rush 2016). The
  frozen FP teacher (``--kd-teacher``, default ``--pretrained-st-checkpoint``) belongs to the criterion, not the model:
  it is built lazily, kept outside the module tree (so it is in no ``parameters()``, optimizer or state dict) and
  always in eval mode, and it sees exactly the student's inputs (the same decoder prefix).
Each part is logged separately (``st_loss``, ``mt_loss``, ``ext_mt_loss``, ``ctc_loss``, ``kd_loss``; the CRESS
criteria add ``reg_loss``), unweighted, in bits per token of its own (source tokens for CTC); ``ctc_impossible``
counts the utterances left out of CTC because their transcript needs more frames than the encoder produced.

Subclasses (the CRESS criteria) replace :meth:`st_training_loss` only; CTC, KD, external MT, validation and logging
stay here. fairseq's trainer tells only the task about a new epoch; the task forwards it to :meth:`set_epoch`.
"""

import logging
import math
import os
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from torch import Tensor, nn

from cress_bitnet.checkpoints import CheckpointError
from cress_bitnet.models.st_checkpoint import build_fp_model

logger = logging.getLogger(__name__)
PARTS = ("st", "mt", "ext_mt", "ctc", "kd", "reg")  # reg: the CRESS criteria (oracle_reg.py)


def token_kl(p_lprobs: Tensor, q_lprobs: Tensor) -> Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) per position, from log-probabilities over the last dimension."""
    return F.kl_div(q_lprobs, p_lprobs, log_target=True, reduction="none").sum(-1)


@dataclass
class SpeechAndTextTranslationCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    mt_finetune: bool = field(default=False, metadata={"help": "also train MT on the transcript of ST batches"})
    ctc_weight: float = field(
        default=0.0, metadata={"help": "weight of an auxiliary CTC loss of the speech encoder output vs the transcript"}
    )
    kd_weight: float = field(
        default=0.0, metadata={"help": "weight of KL(teacher || student) on ST batches (default 0: no distillation)"}
    )
    kd_teacher: Optional[str] = field(  # noqa: UP045 - fairseq's flag generator reads typing.Optional
        default=None, metadata={"help": "FP ST teacher for --kd-weight (default: --pretrained-st-checkpoint)"}
    )


@register_criterion("speech_and_text_translation", dataclass=SpeechAndTextTranslationCriterionConfig)
class SpeechAndTextTranslationCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,  # noqa: ANN001
                 mt_finetune=False, ctc_weight=0.0, kd_weight=0.0, kd_teacher=None):  # noqa: ANN001
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if ctc_weight < 0:
            raise ValueError(f"--ctc-weight must be >= 0, got {ctc_weight}")
        if kd_weight < 0:
            raise ValueError(f"--kd-weight must be >= 0, got {kd_weight}")
        self.mt_finetune = mt_finetune
        self.ctc_weight = ctc_weight
        self.blank_idx = task.target_dictionary.bos()
        self.ignore_idx = {task.target_dictionary.pad(), task.target_dictionary.eos()}
        self.epoch = 1
        self.kd_weight = float(kd_weight)
        self.kd_teacher_path = None
        self._task = task
        self._teacher: list[nn.Module] = []  # a list, not an attribute module: outside the criterion's module tree
        if self.kd_weight > 0:
            run_args = getattr(task, "args", None)
            path = kd_teacher or getattr(run_args, "pretrained_st_checkpoint", None)
            if not path:
                raise ValueError(f"--kd-weight {kd_weight} needs a teacher: pass --kd-teacher PATH "
                                 "(default: the run's --pretrained-st-checkpoint, not set here)")
            if not os.path.isfile(path):
                flag = "--kd-teacher" if kd_teacher else "--pretrained-st-checkpoint (the default --kd-teacher)"
                raise CheckpointError(f"KD teacher not found: {path} (given by {flag})")
            self.kd_teacher_path = path
        elif kd_teacher:
            logger.warning(f"--kd-teacher {kd_teacher} is unused: distillation is off without --kd-weight > 0")

    def set_epoch(self, epoch: int) -> None:
        """Called by the task at the start of every training epoch (fairseq's trainer only calls the task)."""
        self.epoch = epoch

    def _ce(self, model, net_output, sample):  # noqa: ANN001, ANN202
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=True)
        return loss, nll_loss

    def ctc_loss(self, model, net_output, sample):  # noqa: ANN001, ANN201
        """Summed CTC loss, transcript tokens counted, and the number of utterances with no possible alignment.

        An utterance whose transcript needs more frames than the encoder produced (one per token, plus a blank
        between repeated tokens) has no CTC alignment: its loss is infinite. Such rows are left out of the loss and of
        the token count, and counted (``ctc_impossible`` in the log), instead of silently adding 0 to the loss while
        their tokens still dilute the average (what ``zero_infinity`` alone would do).
        """
        extra = net_output[1] if isinstance(net_output, (tuple, list)) and len(net_output) > 1 else None
        if not isinstance(extra, dict) or "encoder_out" not in extra:
            raise ValueError(f"--ctc-weight needs a model that returns its encoder output ({type(model).__name__})")
        encoder_out = extra["encoder_out"]
        x = encoder_out["encoder_out"][0]  # T x B x C
        padding = encoder_out["encoder_padding_mask"][0]  # B x T
        source = sample["source"]
        keep = torch.ones_like(source, dtype=torch.bool)
        for idx in self.ignore_idx:
            keep &= source.ne(idx)
        input_lengths = (~padding).long().sum(1) if padding is not None else source.new_full((x.size(1),), x.size(0))
        target_lengths = keep.long().sum(1)
        possible = input_lengths >= ctc_min_frames(source, keep)
        n_impossible = int((~possible).sum())
        if not bool(possible.any()):
            return x.sum() * 0.0, 0, n_impossible  # keeps the graph (DDP) with no gradient
        if n_impossible:
            x, source, keep = x[:, possible], source[possible], keep[possible]
            input_lengths, target_lengths = input_lengths[possible], target_lengths[possible]
        log_probs = F.log_softmax(model.decoder.output_layer(x).float(), dim=-1)
        loss = F.ctc_loss(log_probs, source[keep], input_lengths, target_lengths, blank=self.blank_idx,
                          reduction="sum", zero_infinity=True)
        return loss, int(keep.sum()), n_impossible

    # ---- knowledge distillation -------------------------------------------------------------------------------
    def teacher(self, like: Tensor) -> nn.Module:
        """The frozen FP teacher, built on first use, on ``like``'s device and (floating) dtype, in eval mode."""
        if not self._teacher:
            hubert = getattr(getattr(self._task, "args", None), "hubert_model_path", None)  # for a CRESS teacher
            teacher, _ = build_fp_model(self.kd_teacher_path, self._task, flag="--kd-teacher",
                                        overrides=Namespace(hubert_model_path=hubert) if hubert else None)
            teacher.requires_grad_(False)
            self._teacher.append(teacher)
        teacher = self._teacher[0].eval()
        return teacher.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)

    def kd_loss(self, model, net_input: dict[str, Any], net_output: Any, sample: dict[str, Any]) -> Tensor:  # noqa: ANN001
        """Unweighted sum over non-pad target tokens of KL(teacher || student); the teacher sees ``net_input``."""
        teacher = self.teacher(next(model.parameters()))
        with torch.no_grad():
            t_lprobs = teacher.get_normalized_probs(teacher(**net_input), log_probs=True).float()
        s_lprobs = model.get_normalized_probs(net_output, log_probs=True).float()
        kl = token_kl(t_lprobs, s_lprobs)
        return kl.masked_fill(sample["target"].eq(self.padding_idx), 0.0).sum()

    # ---- the training loss of a speech batch --------------------------------------------------------------------
    def st_training_loss(self, model, sample: dict[str, Any],  # noqa: ANN001
                         log: dict[str, Any]) -> tuple[Tensor, Tensor, Any, dict[str, Any]]:
        """Loss and NLL of a training ST batch, the ST output and the ST net_input that produced it (for CTC/KD)."""
        net_input = sample["net_input"]
        ntokens = sample["ntokens"]
        net_output = model(**net_input)
        loss, nll_loss = self._ce(model, net_output, sample)
        log["st_loss"], log["st_ntokens"] = loss.data, ntokens
        if self.mt_finetune:
            mt_output = model(sample["source"], sample["source_lengths"], "mt", net_input["prev_output_tokens"])
            mt_loss, mt_nll = self._ce(model, mt_output, sample)
            log["mt_loss"], log["mt_ntokens"] = mt_loss.data, ntokens
            loss, nll_loss = loss + mt_loss, nll_loss + mt_nll
        return loss, nll_loss, net_output, net_input

    def auxiliary_losses(self, model, sample: dict[str, Any], net_output: Any,  # noqa: ANN001
                         net_input: dict[str, Any], log: dict[str, Any]) -> Tensor | float:
        """Weighted CTC and KD terms of a training ST batch (0 when both are off)."""
        extra: Tensor | float = 0.0
        if self.ctc_weight > 0:
            ctc_loss, ctc_ntokens, ctc_impossible = self.ctc_loss(model, net_output, sample)
            log["ctc_loss"], log["ctc_ntokens"] = ctc_loss.data, ctc_ntokens
            log["ctc_impossible"] = ctc_impossible
            extra = extra + self.ctc_weight * ctc_loss
        if self.kd_weight > 0:
            kd_loss = self.kd_loss(model, net_input, net_output, sample)
            log["kd_loss"], log["kd_ntokens"] = kd_loss.data, sample["ntokens"]
            extra = extra + self.kd_weight * kd_loss
        return extra

    def forward(self, model, sample, reduce=True):  # noqa: ANN001, ANN201
        net_input = sample["net_input"]
        mode = net_input.get("mode", "st")
        ntokens = sample["ntokens"]
        log: dict[str, float] = {}
        if mode == "st" and self.training:
            loss, nll_loss, net_output, st_input = self.st_training_loss(model, sample, log)
            loss = loss + self.auxiliary_losses(model, sample, net_output, st_input, log)
        elif mode == "st":
            net_output = model(**net_input)
            loss, nll_loss = self._ce(model, net_output, sample)
            log["st_loss"], log["st_ntokens"] = loss.data, ntokens
        else:
            net_output = model(**net_input)
            loss, nll_loss = self._ce(model, net_output, sample)
            log["ext_mt_loss"], log["ext_mt_ntokens"] = loss.data, ntokens
        sample_size = sample["target"].size(0) if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": ntokens,
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            **log,
        }
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:  # noqa: ANN001
        super().reduce_metrics(logging_outputs)
        for part in PARTS:
            n = sum(log.get(f"{part}_ntokens", 0) for log in logging_outputs)
            if n > 0:
                total = sum(log.get(f"{part}_loss", 0) for log in logging_outputs)
                metrics.log_scalar(f"{part}_loss", utils.item(total) / n / math.log(2), n, round=3)

        if any("ctc_impossible" in log for log in logging_outputs):
            impossible = sum(log.get("ctc_impossible", 0) for log in logging_outputs)
            metrics.log_scalar_sum("ctc_impossible", impossible)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def ctc_min_frames(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Fewest input frames a CTC alignment of each row's kept tokens needs: one per token, plus one blank between
    each pair of equal neighbours (Graves et al. 2006, "Connectionist Temporal Classification", section 3.1)."""
    counts = keep.long().sum(1)
    repeats = torch.zeros_like(counts)
    for b in range(tokens.size(0)):
        row = tokens[b][keep[b]]
        if row.numel() > 1:
            repeats[b] = (row[1:] == row[:-1]).long().sum()
    return counts + repeats
