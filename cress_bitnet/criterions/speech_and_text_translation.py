"""Criterion ``speech_and_text_translation``: label-smoothed CE on speech translation, plus MT on the transcript.

* ST batches: CE of the translation given the audio; with ``--mt-finetune`` (training only) also CE of the
  translation given the transcript of the same utterances, through the shared text encoder.
* External MT batches (``mode == "ext_mt"``): CE of the translation given the source text.
* ``--ctc-weight W`` (training only) adds W x CTC of the speech encoder output against the transcript. Why: the
  translation loss alone reaches the speech encoder only through cross-attention, so a model whose encoder starts
  from little (a small or random HuBERT) can sit on the decoder's language-model plateau for a long time; CTC gives
  every frame a direct signal. The logits reuse the decoder's output projection (joint dictionary, blank = ``<s>`` as
  in fairseq's CTC criterion), so no parameter is added and checkpoints stay CRESS-compatible.
* A model that distils from a teacher (``quant_transformer --kd-weight``) adds its KD term on ST batches.
Each part is logged separately (``st_loss``, ``mt_loss``, ``ext_mt_loss``, ``ctc_loss``, ``kd_loss``), normalised by
its own tokens (source tokens for CTC); ``ctc_impossible`` counts the utterances left out of CTC because their
transcript needs more frames than the encoder produced.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

PARTS = ("st", "mt", "ext_mt", "ctc", "kd")


@dataclass
class SpeechAndTextTranslationCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    mt_finetune: bool = field(default=False, metadata={"help": "also train MT on the transcript of ST batches"})
    ctc_weight: float = field(
        default=0.0, metadata={"help": "weight of an auxiliary CTC loss of the speech encoder output vs the transcript"}
    )


@register_criterion("speech_and_text_translation", dataclass=SpeechAndTextTranslationCriterionConfig)
class SpeechAndTextTranslationCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,  # noqa: ANN001
                 mt_finetune=False, ctc_weight=0.0):  # noqa: ANN001
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if ctc_weight < 0:
            raise ValueError(f"--ctc-weight must be >= 0, got {ctc_weight}")
        self.mt_finetune = mt_finetune
        self.ctc_weight = ctc_weight
        self.blank_idx = task.target_dictionary.bos()
        self.ignore_idx = {task.target_dictionary.pad(), task.target_dictionary.eos()}

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

    def forward(self, model, sample, reduce=True):  # noqa: ANN001, ANN201
        net_input = sample["net_input"]
        mode = net_input.get("mode", "st")
        ntokens = sample["ntokens"]
        log: dict[str, float] = {}
        if mode == "st":
            net_output = model(**net_input)
            loss, nll_loss = self._ce(model, net_output, sample)
            log["st_loss"], log["st_ntokens"] = loss.data, ntokens
            if self.training and self.mt_finetune:
                mt_output = model(sample["source"], sample["source_lengths"], "mt", net_input["prev_output_tokens"])
                mt_loss, mt_nll = self._ce(model, mt_output, sample)
                log["mt_loss"], log["mt_ntokens"] = mt_loss.data, ntokens
                loss, nll_loss = loss + mt_loss, nll_loss + mt_nll
            if self.training and self.ctc_weight > 0:
                ctc_loss, ctc_ntokens, ctc_impossible = self.ctc_loss(model, net_output, sample)
                log["ctc_loss"], log["ctc_ntokens"] = ctc_loss.data, ctc_ntokens
                log["ctc_impossible"] = ctc_impossible
                loss = loss + self.ctc_weight * ctc_loss
            distill = getattr(model, "distillation_loss", None)
            if self.training and distill is not None:
                kd_loss = distill(sample, net_output)
                if kd_loss is not None:
                    log["kd_loss"], log["kd_ntokens"] = kd_loss.data, ntokens
                    loss = loss + kd_loss
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
