"""The CRESS criteria (Fang & Feng, ACL 2023, "Understanding and Bridging the Modality Gap for Speech Translation";
public code: ictnlp/CRESS, ``cress/criterions/*oracle_reg*``), with CRESS's flag names and defaults.

``speech_and_text_translation_with_oracle_reg``: on every training ST batch, run the ST branch (audio) and the MT
branch (its transcript) with the same target and train
``CE_ls(ST) + CE_ls(MT) + reg_weight * JSD(ST, MT)``, where

* with ``--use-word-level-oracle`` each branch's decoder input is a mix of the gold prefix and the model's own
  predictions (word-level scheduled sampling, Zhang et al. ACL 2019 "Bridging the gap between training and inference
  for NMT"): the decoder runs once without gradient on the gold prefix, its argmax (optionally over logits + Gumbel
  noise, ``--use-word-gumbel-noise``) shifted right replaces each gold token with probability 1 - p, where
  ``p = k / (k + exp(epoch / k))`` (``--decay-k``) decays with the training epoch;
* "JSD" is CRESS's symmetrised KL, ``1/2 * sum_tokens [KL(st || mt) + KL(mt || st)]`` over the vocabulary, padding
  masked, gradient through both branches (CRESS's name; not the Jensen-Shannon divergence proper).

``speech_and_text_translation_with_oracle_reg_adaptive`` (full CRESS) weights tokens by how far the two branches are
apart: ``w = adaptive_base + adaptive_scale * (1 - cos(h_st, h_mt))`` from the detached last decoder states
(``inner_states[-1]``), applied to the NLL part of the ST / MT losses and to both KL terms (``--adaptive-st-loss``,
``--adaptive-mt-loss``, ``--adaptive-reg-loss``); ``--adaptive-weight-drop`` resets a random fraction of them to 1.

Fixed against CRESS's code: the adaptive weights are transposed from the decoder's T x B layout to the B x T order of
the flattened log-probabilities (CRESS flattens them T-major, so for B > 1 they land on other sentences' tokens);
no ``.cuda()`` (runs on CPU); the epoch arrives through ``set_epoch`` (the task forwards the trainer's epoch);
decoder-input padding stays padding and the oracle never predicts ``<pad>`` (in CRESS a predicted or mixed-in pad
would be masked as padding inside the sentence).
Kept as CRESS: ``sample_size`` is the number of target tokens although ST, MT and JSD are summed;
``--gumbel-temperature`` divides the noisy logits before an argmax, so it does not change the chosen tokens.
Validation scores ST only.
The encoder runs once per modality and the decoder is called directly (as in CRESS). PyTorch's
DistributedDataParallel all-reduces gradients only for outputs of its own ``forward``, so with it the replicas would
silently drift apart: multi-GPU training needs ``--ddp-backend legacy_ddp`` (every CRESS recipe uses it), and the
criterion refuses a model wrapped in ``DistributedDataParallel``.

Everything else (``--ctc-weight``, ``--kd-weight``, external MT batches, logging) is the base criterion's.
"""

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from torch import Tensor

from cress_bitnet.criterions.speech_and_text_translation import (
    SpeechAndTextTranslationCriterion,
    SpeechAndTextTranslationCriterionConfig,
    token_kl,
)

REG_LOSS_TYPES = ChoiceEnum(["jsd"])
ADAPTIVE_FUNCS = ChoiceEnum(["linear_cosine"])


def gold_probability(epoch: float, k: float) -> float:
    """Probability of keeping a gold decoder-input token at ``epoch`` (inverse-sigmoid decay, ``--decay-k``):
    k / (k + exp(epoch / k)), written as a logistic so that late epochs or small k give 0 instead of overflowing."""
    z = epoch / k - math.log(k)
    return 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))


def gumbel_noise(like: Tensor, eps: float = 1e-6) -> Tensor:
    """-log(-log U) with U ~ Uniform(0, 1), in float32, shaped like ``like`` (Gumbel-max trick)."""
    u = torch.rand(like.shape, device=like.device, dtype=torch.float32)
    return -torch.log(-torch.log(u + eps) + eps)


def label_smoothed_loss(lprobs: Tensor, target: Tensor, epsilon: float, ignore_index: int,
                        weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """fairseq's label-smoothed NLL (summed, padding ignored) with optional per-token weights on its NLL part only
    (CRESS's adaptive ST/MT losses). ``lprobs`` is N x V, ``target`` and ``weight`` are N. Returns (loss, nll_loss)."""
    nll = -lprobs.gather(dim=-1, index=target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.sum(dim=-1)
    pad = target.eq(ignore_index)
    nll, smooth = nll.masked_fill(pad, 0.0), smooth.masked_fill(pad, 0.0)
    weighted = nll if weight is None else nll * weight
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * weighted.sum() + eps_i * smooth.sum()
    return loss, nll.sum()


def symmetric_kl(p_lprobs: Tensor, q_lprobs: Tensor, pad_mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """CRESS's "JSD": 1/2 * sum over non-pad positions of w * [KL(p || q) + KL(q || p)] (w = 1 without weights)."""
    kl = token_kl(p_lprobs, q_lprobs) + token_kl(q_lprobs, p_lprobs)
    if weight is not None:
        kl = kl * weight
    return kl.masked_fill(pad_mask, 0.0).sum() / 2.0


@dataclass
class OracleRegCriterionConfig(SpeechAndTextTranslationCriterionConfig):
    reg_weight: float = field(default=1.0, metadata={"help": "weight of the ST-MT regularization (JSD)"})
    reg_loss_type: REG_LOSS_TYPES = field(default="jsd", metadata={"help": "regularization between ST and MT"})
    use_word_level_oracle: bool = field(
        default=False, metadata={"help": "mix the model's own predictions into the decoder input (scheduled sampling)"}
    )
    decay_k: float = field(default=15, metadata={"help": "k of the gold-token probability k / (k + exp(epoch / k))"})
    use_word_gumbel_noise: bool = field(default=False, metadata={"help": "add Gumbel noise before the oracle argmax"})
    gumbel_temperature: float = field(default=1.0, metadata={"help": "temperature of the Gumbel-max oracle"})


@dataclass
class OracleRegAdaptiveCriterionConfig(OracleRegCriterionConfig):
    adaptive_base: float = field(default=1.0, metadata={"help": "token weight: base + scale * F"})
    adaptive_scale: float = field(default=1.0, metadata={"help": "token weight: base + scale * F"})
    adaptive_func: ADAPTIVE_FUNCS = field(
        default="linear_cosine", metadata={"help": "F of the token weight; linear_cosine: 1 - cos(h_st, h_mt)"}
    )
    adaptive_st_loss: bool = field(default=False, metadata={"help": "weight the ST loss per token"})
    adaptive_mt_loss: bool = field(default=False, metadata={"help": "weight the MT loss per token"})
    adaptive_reg_loss: bool = field(default=False, metadata={"help": "weight the regularization per token"})
    adaptive_weight_drop: float = field(default=0.0, metadata={"help": "fraction of token weights reset to 1"})


BASE_INIT_ARGS = tuple(p for p in inspect.signature(SpeechAndTextTranslationCriterion.__init__).parameters
                       if p not in ("self", "task"))


@register_criterion("speech_and_text_translation_with_oracle_reg", dataclass=OracleRegCriterionConfig)
class OracleRegCriterion(SpeechAndTextTranslationCriterion):
    def __init__(self, task, cfg: OracleRegCriterionConfig) -> None:  # noqa: ANN001
        super().__init__(task, **{name: getattr(cfg, name) for name in BASE_INIT_ARGS if hasattr(cfg, name)})
        if str(cfg.reg_loss_type) != "jsd":
            raise ValueError(f"--reg-loss-type {cfg.reg_loss_type}: only jsd is implemented")
        if cfg.reg_weight < 0:
            raise ValueError(f"--reg-weight must be >= 0, got {cfg.reg_weight}")
        if cfg.decay_k <= 0:
            raise ValueError(f"--decay-k must be > 0, got {cfg.decay_k}")
        if cfg.gumbel_temperature <= 0:
            raise ValueError(f"--gumbel-temperature must be > 0, got {cfg.gumbel_temperature}")
        self.reg_weight = cfg.reg_weight
        self.use_word_level_oracle = cfg.use_word_level_oracle
        self.decay_k = cfg.decay_k
        self.use_word_gumbel_noise = cfg.use_word_gumbel_noise
        self.gumbel_temperature = cfg.gumbel_temperature

    # ---- word-level oracle --------------------------------------------------------------------------------------
    def gold_prob(self) -> float:
        return gold_probability(self.epoch, self.decay_k)

    def oracle_prefix(self, logits: Tensor, prev_output_tokens: Tensor) -> Tensor:
        """Decoder input mixing gold tokens (kept with :meth:`gold_prob`) and the shifted oracle predictions."""
        scores = logits.float().index_fill(-1, torch.tensor([self.padding_idx], device=logits.device), -math.inf)
        if self.use_word_gumbel_noise:
            scores = (scores + gumbel_noise(scores)) / self.gumbel_temperature
        predicted = scores.argmax(dim=-1).to(prev_output_tokens)
        shifted = torch.cat([prev_output_tokens[:, :1], predicted[:, :-1]], dim=1)
        keep = torch.bernoulli(torch.full(prev_output_tokens.shape, self.gold_prob(),
                                          device=prev_output_tokens.device)).bool()
        keep |= prev_output_tokens.eq(self.padding_idx)
        return torch.where(keep, prev_output_tokens, shifted)

    def branch(self, model, src_tokens: Tensor, src_lengths: Tensor, mode: str,  # noqa: ANN001
               prev_output_tokens: Tensor) -> tuple[Any, dict[str, Any]]:
        """One modality: encoder once, optional no-grad oracle pass, decoder with gradient.

        Returns the decoder output (with ``encoder_out`` in its extra, for CTC) and the net_input it corresponds to
        (for the KD teacher)."""
        refuse_torch_ddp(model)
        encoder_out = model.encoder(src_tokens, src_lengths, mode)
        if self.use_word_level_oracle:
            with torch.no_grad():
                logits, _ = model.decoder(prev_output_tokens, encoder_out=encoder_out)
            prev_output_tokens = self.oracle_prefix(logits.detach(), prev_output_tokens)
        x, extra = model.decoder(prev_output_tokens, encoder_out=encoder_out)
        extra["encoder_out"] = encoder_out
        net_input = {"src_tokens": src_tokens, "src_lengths": src_lengths, "mode": mode,
                     "prev_output_tokens": prev_output_tokens}
        return (x, extra), net_input

    # ---- losses -------------------------------------------------------------------------------------------------
    def token_weights(self, st_output: Any, mt_output: Any) -> Tensor | None:
        """Per-token weights in the flattened B x T order of ``get_lprobs_and_target``; None: unweighted."""
        return None

    def st_training_loss(self, model, sample: dict[str, Any],  # noqa: ANN001
                         log: dict[str, Any]) -> tuple[Tensor, Tensor, Any, dict[str, Any]]:
        net_input = sample["net_input"]
        prev = net_input["prev_output_tokens"]
        st_output, st_input = self.branch(model, net_input["src_tokens"], net_input["src_lengths"], "st", prev)
        mt_output, _ = self.branch(model, sample["source"], sample["source_lengths"], "mt", prev)
        st_lprobs, target = self.get_lprobs_and_target(model, st_output, sample)
        mt_lprobs, _ = self.get_lprobs_and_target(model, mt_output, sample)
        st_lprobs, mt_lprobs = st_lprobs.float(), mt_lprobs.float()
        weight = self.token_weights(st_output, mt_output)
        st_loss, st_nll = label_smoothed_loss(st_lprobs, target, self.eps, self.padding_idx,
                                              self.weight_for("st", weight))
        mt_loss, mt_nll = label_smoothed_loss(mt_lprobs, target, self.eps, self.padding_idx,
                                              self.weight_for("mt", weight))
        reg_loss = symmetric_kl(st_lprobs, mt_lprobs, target.eq(self.padding_idx), self.weight_for("reg", weight))
        ntokens = sample["ntokens"]
        log["st_loss"], log["st_ntokens"] = st_loss.data, ntokens
        log["mt_loss"], log["mt_ntokens"] = mt_loss.data, ntokens
        log["reg_loss"], log["reg_ntokens"] = reg_loss.data, ntokens
        if self.use_word_level_oracle:
            log["gold_prob_sum"] = self.gold_prob() * ntokens  # averaged by reduce_metrics
        loss = st_loss + mt_loss + self.reg_weight * reg_loss
        return loss, st_nll + mt_nll, st_output, st_input

    def weight_for(self, term: str, weight: Tensor | None) -> Tensor | None:
        """The token weights that apply to ``term`` (st, mt or reg); the non-adaptive criterion weights nothing."""
        return None

    @classmethod
    def reduce_metrics(cls, logging_outputs: list[dict[str, Any]]) -> None:
        """The base logs every part (``reg_loss`` included); the oracle's gold-token probability is added here."""
        super().reduce_metrics(logging_outputs)
        n = sum(log.get("reg_ntokens", 0) for log in logging_outputs if "gold_prob_sum" in log)
        if n > 0:
            metrics.log_scalar("gold_prob", sum(log.get("gold_prob_sum", 0) for log in logging_outputs) / n, n,
                               round=4)


@register_criterion("speech_and_text_translation_with_oracle_reg_adaptive", dataclass=OracleRegAdaptiveCriterionConfig)
class OracleRegAdaptiveCriterion(OracleRegCriterion):
    def __init__(self, task, cfg: OracleRegAdaptiveCriterionConfig) -> None:  # noqa: ANN001
        super().__init__(task, cfg)
        if str(cfg.adaptive_func) != "linear_cosine":
            raise ValueError(f"--adaptive-func {cfg.adaptive_func}: only linear_cosine is implemented")
        if not 0.0 <= cfg.adaptive_weight_drop <= 1.0:
            raise ValueError(f"--adaptive-weight-drop must be in [0, 1], got {cfg.adaptive_weight_drop}")
        self.adaptive_base = cfg.adaptive_base
        self.adaptive_scale = cfg.adaptive_scale
        self.adaptive_weight_drop = cfg.adaptive_weight_drop
        self.adaptive_terms = {"st": cfg.adaptive_st_loss, "mt": cfg.adaptive_mt_loss, "reg": cfg.adaptive_reg_loss}

    def token_weights(self, st_output: Any, mt_output: Any) -> Tensor:
        """``base + scale * (1 - cos(h_st, h_mt))`` per target position, from the detached last decoder states."""
        h_st = last_decoder_state(st_output).detach().float()
        h_mt = last_decoder_state(mt_output).detach().float()
        weight = self.adaptive_base + self.adaptive_scale * (1.0 - F.cosine_similarity(h_st, h_mt, dim=-1))
        weight = weight.transpose(0, 1)  # T x B -> B x T, the order of get_lprobs_and_target's flattening
        if self.ignore_prefix_size > 0:
            weight = weight[:, self.ignore_prefix_size:]
        weight = weight.reshape(-1)
        if self.adaptive_weight_drop > 0:
            drop = torch.bernoulli(torch.full_like(weight, self.adaptive_weight_drop)).bool()
            weight = weight.masked_fill(drop, 1.0)
        return weight

    def weight_for(self, term: str, weight: Tensor | None) -> Tensor | None:
        return weight if self.adaptive_terms[term] else None


def last_decoder_state(net_output: Any) -> Tensor:
    """The last decoder layer's output (T x B x C), fairseq's ``extra["inner_states"][-1]``."""
    extra = net_output[1] if isinstance(net_output, (tuple, list)) and len(net_output) > 1 else None
    states = extra.get("inner_states") if isinstance(extra, dict) else None
    if not states:
        raise ValueError("--adaptive-* weights need a decoder that returns its layer outputs (extra['inner_states'])")
    return states[-1]


def refuse_torch_ddp(model: Any) -> None:
    """Stop when the model is wrapped in torch's DistributedDataParallel (gradients would not be synchronised)."""
    while model is not None:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            raise ValueError("the CRESS criteria call the encoder and decoder directly, which torch's "
                             "DistributedDataParallel does not synchronise: pass --ddp-backend legacy_ddp "
                             "(as CRESS's recipes do)")
        model = getattr(model, "module", None)
