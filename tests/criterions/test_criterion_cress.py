"""The CRESS criteria: oracle schedule, Gumbel oracle, JSD symmetry and masking, token alignment of the adaptive
weights (CRESS's T x B vs B x T bug), the loss composition with CTC and KD, and the epoch reaching the criterion."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fake_st_model import EOS, PAD, VOCAB, FakeSTModel, fake_task, padded_batch

import cress_bitnet  # noqa: F401  (registers the criteria)
from cress_bitnet.criterions import speech_and_text_translation as base
from cress_bitnet.criterions.oracle_reg import (
    OracleRegAdaptiveCriterion,
    OracleRegAdaptiveCriterionConfig,
    OracleRegCriterion,
    OracleRegCriterionConfig,
    gold_probability,
    label_smoothed_loss,
    symmetric_kl,
)
from cress_bitnet.criterions.speech_and_text_translation import SpeechAndTextTranslationCriterion

ORACLE = OracleRegCriterionConfig(sentence_avg=False, label_smoothing=0.0)
ADAPTIVE = OracleRegAdaptiveCriterionConfig(sentence_avg=False, label_smoothing=0.0)


def oracle(**changes: object) -> OracleRegCriterion:
    return OracleRegCriterion(fake_task(), replace(ORACLE, **changes))


def adaptive(**changes: object) -> OracleRegAdaptiveCriterion:
    return OracleRegAdaptiveCriterion(fake_task(), replace(ADAPTIVE, **changes))


# ---- oracle schedule ----------------------------------------------------------------------------------------------
def test_gold_probability_schedule() -> None:
    # k / (k + exp(epoch / k)); CRESS's k=15 gives ~0.93 at epoch 1, ~0.80 at 20, ~0.43 at 45 (paper / cress.md)
    assert gold_probability(1, 15) == pytest.approx(15 / (15 + math.exp(1 / 15)))
    assert gold_probability(1, 15) == pytest.approx(0.93348, abs=1e-5)
    assert gold_probability(20, 15) == pytest.approx(0.79814, abs=1e-5)
    assert gold_probability(45, 15) == pytest.approx(0.42753, abs=1e-5)
    assert gold_probability(10, 5) == pytest.approx(5 / (5 + math.e**2))
    crit = oracle(use_word_level_oracle=True)
    assert crit.gold_prob() == pytest.approx(gold_probability(1, 15))  # epoch 1 before any set_epoch
    crit.set_epoch(45)
    assert crit.gold_prob() == pytest.approx(0.42753, abs=1e-5)


@pytest.mark.parametrize("epoch", [1, 45])
def test_oracle_prefix_keeps_gold_at_the_scheduled_rate_and_shifts_predictions(epoch: int) -> None:
    torch.manual_seed(0)
    crit = oracle(use_word_level_oracle=True)
    crit.set_epoch(epoch)
    bsz, steps = 64, 50
    gold = torch.randint(4, VOCAB, (bsz, steps))
    gold[:, 0] = EOS
    gold[:8, 40:] = PAD
    logits = torch.randn(bsz, steps, VOCAB)
    mixed = crit.oracle_prefix(logits, gold)
    allowed = logits.clone()
    allowed[..., PAD] = -math.inf  # the oracle never predicts <pad>
    predicted_next = torch.cat([gold[:, :1], allowed.argmax(-1)[:, :-1]], dim=1)
    assert torch.equal(mixed[:, 0], gold[:, 0])  # BOS stays
    assert torch.equal(mixed[:8, 40:], gold[:8, 40:])  # padding stays padding
    from_gold = mixed.eq(gold)
    assert bool((from_gold | mixed.eq(predicted_next)).all())  # every token is gold or the shifted prediction
    real = gold.ne(PAD) & gold.ne(predicted_next)
    real[:, 0] = False
    rate = from_gold[real].float().mean().item()
    assert rate == pytest.approx(gold_probability(epoch, 15), abs=0.03)


def test_gumbel_oracle_samples_the_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.full((1, 4001, VOCAB), -math.inf)
    logits[..., 4], logits[..., 5], logits[..., PAD] = 0.0, math.log(3.0), 10.0  # softmax over a, b: 0.25 / 0.75
    prev = torch.full((1, 4001), EOS)
    plain = oracle(use_word_level_oracle=True, decay_k=1e-3)  # p(gold) = 0: every token is the oracle's
    assert plain.gold_prob() < 1e-6
    assert bool(plain.oracle_prefix(logits, prev)[0, 1:].eq(5).all())  # argmax without noise, never <pad>
    noisy = oracle(use_word_level_oracle=True, decay_k=1e-3, use_word_gumbel_noise=True, gumbel_temperature=0.5)
    share = noisy.oracle_prefix(logits, prev)[0, 1:].eq(5).float().mean().item()
    assert share == pytest.approx(0.75, abs=0.03)


# ---- JSD ----------------------------------------------------------------------------------------------------------
def test_jsd_is_half_the_symmetric_kl_summed_over_non_pad_tokens() -> None:
    torch.manual_seed(0)
    p = torch.log_softmax(torch.randn(5, VOCAB), -1)
    q = torch.log_softmax(torch.randn(5, VOCAB), -1)
    pad = torch.tensor([False, False, True, False, True])
    expected = 0.0
    for i in range(5):
        if not pad[i]:
            pi, qi = p[i].exp(), q[i].exp()
            expected += 0.5 * float((pi * (p[i] - q[i])).sum() + (qi * (q[i] - p[i])).sum())
    assert symmetric_kl(p, q, pad).item() == pytest.approx(expected, rel=1e-5)
    assert symmetric_kl(q, p, pad).item() == pytest.approx(expected, rel=1e-5)  # symmetric
    assert symmetric_kl(p, p, pad).item() == pytest.approx(0.0, abs=1e-6)
    q2 = q.clone()
    q2[pad] = torch.log_softmax(torch.randn(2, VOCAB) * 5, -1)  # pad rows do not count
    assert symmetric_kl(p, q2, pad).item() == pytest.approx(expected, rel=1e-5)
    w = torch.tensor([2.0, 0.5, 9.0, 1.0, 9.0])
    weighted = sum(0.5 * w[i] * float(((p[i].exp() * (p[i] - q[i])) + (q[i].exp() * (q[i] - p[i]))).sum())
                   for i in range(5) if not pad[i])
    assert symmetric_kl(p, q, pad, w).item() == pytest.approx(float(weighted), rel=1e-5)


def test_label_smoothed_loss_matches_fairseq_and_weights_only_the_nll_part() -> None:
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    torch.manual_seed(0)
    lprobs = torch.log_softmax(torch.randn(6, VOCAB), -1)
    target = torch.tensor([4, 5, PAD, 6, 7, PAD])
    ref_loss, ref_nll = label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=PAD)
    loss, nll = label_smoothed_loss(lprobs, target, 0.1, PAD)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6) and nll.item() == pytest.approx(ref_nll.item())
    w = torch.tensor([2.0, 1.0, 5.0, 0.5, 1.0, 5.0])
    wloss, _ = label_smoothed_loss(lprobs, target, 0.1, PAD, w)
    eps_i = 0.1 / (VOCAB - 1)
    keep = target.ne(PAD)
    nll_tok = -lprobs[torch.arange(6), target]
    smooth = -lprobs.sum(-1)
    expected = (1 - 0.1 - eps_i) * (w * nll_tok)[keep].sum() + eps_i * smooth[keep].sum()
    assert wloss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- adaptive weights ---------------------------------------------------------------------------------------------
def states(t: int, b: int, seed: int) -> tuple:
    torch.manual_seed(seed)
    return (None, {"inner_states": [torch.randn(t, b, 4), torch.randn(t, b, 4)]})


def test_adaptive_weights_land_on_their_own_tokens() -> None:
    steps, bsz = 3, 2
    st, mt = states(steps, bsz, 1), states(steps, bsz, 2)
    crit = adaptive(adaptive_base=0.7, adaptive_scale=0.05)
    weight = crit.token_weights(st, mt).view(bsz, steps)  # B x T, the order of get_lprobs_and_target
    for b in range(bsz):
        for t in range(steps):
            cos = F.cosine_similarity(st[1]["inner_states"][-1][t, b], mt[1]["inner_states"][-1][t, b], dim=0)
            assert weight[b, t].item() == pytest.approx(0.7 + 0.05 * (1 - cos.item()), rel=1e-6)
    prefixed = adaptive(adaptive_base=0.7, adaptive_scale=0.05, ignore_prefix_size=1)
    assert torch.allclose(prefixed.token_weights(st, mt).view(bsz, steps - 1), weight[:, 1:])


def test_adaptive_weight_drop_resets_to_one() -> None:
    st, mt = states(40, 50, 1), states(40, 50, 2)
    torch.manual_seed(0)
    weight = adaptive(adaptive_base=3.0, adaptive_weight_drop=0.25).token_weights(st, mt)
    assert weight.eq(1.0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert bool(weight[weight.ne(1.0)].ge(3.0).all())


def hand_losses(model: FakeSTModel, sample: dict, weight_of=None) -> dict[str, float]:  # noqa: ANN001
    """ST NLL, MT NLL and JSD of the fake model written out token by token (label smoothing 0, gold prefix)."""
    net = sample["net_input"]
    with torch.no_grad():
        st_out = model(net["src_tokens"], net["src_lengths"], "st", net["prev_output_tokens"])
        mt_out = model(sample["source"], sample["source_lengths"], "mt", net["prev_output_tokens"])
    st, mt = torch.log_softmax(st_out[0].double(), -1), torch.log_softmax(mt_out[0].double(), -1)
    h_st, h_mt = st_out[1]["inner_states"][-1], mt_out[1]["inner_states"][-1]
    out = {"st": 0.0, "mt": 0.0, "reg": 0.0}
    target = sample["target"]
    for b in range(target.size(0)):
        for t in range(target.size(1)):
            y = int(target[b, t])
            if y == PAD:
                continue
            w = 1.0
            if weight_of is not None:
                w = weight_of(F.cosine_similarity(h_st[t, b], h_mt[t, b], dim=0).item())
            out["st"] += w * -float(st[b, t, y])
            out["mt"] += -float(mt[b, t, y])
            kl = float((st[b, t].exp() * (st[b, t] - mt[b, t])).sum() + (mt[b, t].exp() * (mt[b, t] - st[b, t])).sum())
            out["reg"] += 0.5 * w * kl
    return out


def test_oracle_reg_loss_is_st_plus_mt_plus_weighted_jsd() -> None:
    model, sample = FakeSTModel(seed=0), padded_batch()
    expected = hand_losses(model, sample)
    loss, sample_size, log = oracle(reg_weight=0.5)(model, sample)
    assert log["st_loss"].item() == pytest.approx(expected["st"], rel=1e-5)
    assert log["mt_loss"].item() == pytest.approx(expected["mt"], rel=1e-5)
    assert log["reg_loss"].item() == pytest.approx(expected["reg"], rel=1e-5)
    assert loss.item() == pytest.approx(expected["st"] + expected["mt"] + 0.5 * expected["reg"], rel=1e-5)
    assert sample_size == sample["ntokens"] == 9
    loss.backward()
    assert model.encoder.embed.weight.grad.abs().sum() > 0 and model.encoder.audio.weight.grad.abs().sum() > 0


def test_adaptive_st_weights_reach_the_right_tokens_in_the_loss() -> None:
    # B = 3, T = 4: with CRESS's T-major flattening the weights would land on other sentences' tokens
    model, sample = FakeSTModel(seed=0), padded_batch()
    expected = hand_losses(model, sample, weight_of=lambda cos: 0.7 + 5.0 * (1 - cos))
    crit = adaptive(adaptive_base=0.7, adaptive_scale=5.0, adaptive_st_loss=True, adaptive_reg_loss=True)
    _, _, log = crit(model, sample)
    assert log["st_loss"].item() == pytest.approx(expected["st"], rel=1e-5)
    assert log["mt_loss"].item() == pytest.approx(expected["mt"], rel=1e-5)  # --adaptive-mt-loss off: unweighted
    assert log["reg_loss"].item() == pytest.approx(expected["reg"], rel=1e-5)


def test_validation_scores_st_only_and_ext_mt_batches_are_plain_ce() -> None:
    model, sample = FakeSTModel(seed=0), padded_batch()
    crit = oracle(use_word_level_oracle=True)
    crit.eval()
    loss, _, log = crit(model, sample)
    assert set(k for k in log if k.endswith("_loss") and k != "nll_loss") == {"st_loss"}
    assert loss.item() == pytest.approx(hand_losses(model, sample)["st"], rel=1e-5)
    crit.train()
    ext = padded_batch("ext_mt")
    _, _, log = crit(model, ext)
    assert set(k for k in log if k.endswith("_loss") and k != "nll_loss") == {"ext_mt_loss"}


def spy_decoder_inputs(model: FakeSTModel) -> list[torch.Tensor]:
    """Wrap the model's decoder forward; returns the list each call's decoder input (prev tokens) is appended to."""
    seen: list[torch.Tensor] = []
    decoder_forward = model.decoder.forward

    def spy(prev: torch.Tensor, encoder_out: dict) -> tuple:
        seen.append(prev.clone())
        return decoder_forward(prev, encoder_out=encoder_out)

    model.decoder.forward = spy
    return seen


def test_oracle_prefix_is_used_for_the_graded_pass() -> None:
    model, sample = FakeSTModel(seed=0), padded_batch()
    crit = oracle(use_word_level_oracle=True, decay_k=1e-3)  # p(gold) ~ 0: the decoder input is the oracle's
    seen = spy_decoder_inputs(model)
    _, _, log = crit(model, sample)
    gold = sample["net_input"]["prev_output_tokens"]
    assert len(seen) == 4 and torch.equal(seen[0], gold) and torch.equal(seen[2], gold)  # oracle passes, per branch
    for graded in (seen[1], seen[3]):
        assert torch.equal(graded[:, 0], gold[:, 0]) and torch.equal(graded.eq(PAD), gold.eq(PAD))
        assert not torch.equal(graded, gold)
    assert log["gold_prob_sum"] == pytest.approx(crit.gold_prob() * sample["ntokens"])


def test_cress_criteria_add_ctc_and_kd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, sample = FakeSTModel(seed=0), padded_batch()
    teacher = FakeSTModel(seed=1)
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"stand-in")
    monkeypatch.setattr(base, "build_fp_model", lambda *a, **k: (teacher, None))
    sample["source"] = torch.tensor([[6, 5, EOS], [4, EOS, PAD], [8, EOS, PAD]])
    sample["net_input"]["src_lengths"] = torch.tensor([5, 5, 5])  # enough frames for the CTC alignment
    plain_loss, _, _ = adaptive(adaptive_st_loss=True)(model, sample)
    crit = adaptive(adaptive_st_loss=True, ctc_weight=0.3, kd_weight=2.0, kd_teacher=str(path),
                    use_word_level_oracle=True)
    seen = spy_decoder_inputs(model)
    torch.manual_seed(0)
    loss, _, log = crit(model, sample)
    assert {"st_loss", "mt_loss", "reg_loss", "ctc_loss", "kd_loss"} <= set(log)
    assert log["ctc_loss"].item() > 0 and log["kd_loss"].item() > 0
    assert loss.item() == pytest.approx(log["st_loss"].item() + log["mt_loss"].item() + log["reg_loss"].item()
                                        + 0.3 * log["ctc_loss"].item() + 2.0 * log["kd_loss"].item(), rel=1e-5)
    # the teacher saw the student's (oracle-mixed) ST decoder input
    assert len(teacher.seen_prev) == 1 and torch.equal(teacher.seen_prev[0], seen[1])
    assert not torch.equal(plain_loss, loss)


def test_flag_validation() -> None:
    with pytest.raises(ValueError, match="--decay-k must be > 0"):
        oracle(decay_k=0)
    with pytest.raises(ValueError, match="--reg-weight must be >= 0"):
        oracle(reg_weight=-1)
    with pytest.raises(ValueError, match="--adaptive-weight-drop must be in"):
        adaptive(adaptive_weight_drop=1.5)
    with pytest.raises(ValueError, match="--reg-loss-type l1: only jsd"):
        oracle(reg_loss_type="l1")


def test_set_epoch_is_on_every_criterion() -> None:
    crit = SpeechAndTextTranslationCriterion(fake_task(), False, 0.0)
    assert crit.epoch == 1
    crit.set_epoch(7)
    assert crit.epoch == 7


def test_the_task_forwards_the_trainers_epoch_to_model_and_criterion() -> None:
    # fairseq 0.12's Trainer.begin_epoch calls only task.begin_epoch(epoch, model)
    from cress_bitnet.tasks.speech_and_text_translation import SpeechAndTextTranslationTask

    task = object.__new__(SpeechAndTextTranslationTask)  # begin_epoch touches nothing else of the task
    task.criterion = oracle(use_word_level_oracle=True)
    model = FakeSTModel(seed=0)
    SpeechAndTextTranslationTask.begin_epoch(task, 3, model)
    assert task.criterion.epoch == 3 and model.epochs == [3]
    assert task.criterion.gold_prob() == pytest.approx(gold_probability(3, 15))


def test_logged_terms_are_per_token_in_bits_and_gold_prob_is_averaged() -> None:
    from fairseq import metrics

    model, sample = FakeSTModel(seed=0), padded_batch()
    crit = oracle(use_word_level_oracle=True)
    crit.set_epoch(20)
    logs = [crit(model, sample)[2], crit(model, sample)[2]]
    with metrics.aggregate() as agg:
        OracleRegCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    n = 2 * sample["ntokens"]
    for part in ("st", "mt", "reg"):
        total = sum(log[f"{part}_loss"].item() for log in logs)
        assert values[f"{part}_loss"] == pytest.approx(total / n / math.log(2), abs=1e-3)
    assert values["gold_prob"] == pytest.approx(gold_probability(20, 15), abs=1e-4)


def test_torch_ddp_is_refused_with_the_flag_to_use(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(FakeSTModel(seed=0))
        proxy = type("Proxy", (), {"module": wrapped})()  # fairseq's ModuleProxyWrapper keeps DDP as .module
        with pytest.raises(ValueError, match="--ddp-backend legacy_ddp"):
            oracle()(proxy, padded_batch())
    finally:
        dist.destroy_process_group()
