"""The criterion's auxiliary CTC term (--ctc-weight): targets, lengths and blank on hand-built alignments."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from fairseq import metrics
from fairseq.data import Dictionary

import cress_bitnet  # noqa: F401  (registers the criterion)
from cress_bitnet.criterions.speech_and_text_translation import SpeechAndTextTranslationCriterion, ctc_min_frames


def _criterion(weight: float = 1.0) -> SpeechAndTextTranslationCriterion:
    d = Dictionary()  # <s>=0 (the blank), <pad>=1, </s>=2, <unk>=3
    for sym in "abc":
        d.add_symbol(sym)  # a=4, b=5, c=6
    return SpeechAndTextTranslationCriterion(SimpleNamespace(target_dictionary=d), False, 0.0, ctc_weight=weight)


def _aligned(paths: list[list[int]], frames: int, garbage: int = 5) -> tuple[tuple, torch.Tensor]:
    """Encoder output whose identity 'projection' puts logit 12 on each path symbol; padded frames scream `garbage`."""
    x = torch.zeros(frames, len(paths), 7)
    padding = torch.ones(len(paths), frames, dtype=torch.bool)
    for b, path in enumerate(paths):
        for t in range(frames):
            x[t, b, path[t] if t < len(path) else garbage] = 12.0
        padding[b, : len(path)] = False
    extra = {"encoder_out": {"encoder_out": [x], "encoder_padding_mask": [padding]}}
    return (None, extra), x


MODEL = SimpleNamespace(decoder=SimpleNamespace(output_layer=lambda x: x))


def test_ctc_of_the_aligned_transcript_is_near_zero_and_counts_source_tokens() -> None:
    crit = _criterion()
    # "a b b c" needs a blank (0) between the repeated b's; row 2 is "c a" with pads and a trailing </s>.
    net_output, _ = _aligned([[4, 4, 5, 0, 5, 6, 6, 0], [6, 0, 4, 4, 0]], frames=8)
    source = torch.tensor([[4, 5, 5, 6], [6, 4, 2, 1]])
    loss, ntokens, impossible = crit.ctc_loss(MODEL, net_output, {"source": source})
    assert ntokens == 6 and impossible == 0  # </s> and <pad> are not CTC targets
    assert 0 <= loss.item() < 0.01

    wrong = torch.tensor([[4, 5, 6, 1], [4, 6, 2, 1]])  # merged repeat in row 1, swapped order in row 2
    wrong_loss, _, _ = crit.ctc_loss(MODEL, net_output, {"source": wrong})
    assert wrong_loss.item() > 10


def test_padded_frames_are_not_scored() -> None:
    crit = _criterion()
    net_output, _ = _aligned([[4, 0, 5, 5, 6], [6, 4]], frames=5)
    loss, _, _ = crit.ctc_loss(MODEL, net_output, {"source": torch.tensor([[4, 5, 6], [6, 4, 1]])})
    assert loss.item() < 0.01  # row 2's three padded frames predict 'b' and would cost ~36 nats if scored


def test_ctc_gradient_reaches_the_encoder_output() -> None:
    crit = _criterion()
    net_output, x = _aligned([[4, 5, 6, 0]], frames=4)
    x.mul_(0.1).requires_grad_(True)
    net_output[1]["encoder_out"]["encoder_out"] = [x]
    loss, _, _ = crit.ctc_loss(MODEL, net_output, {"source": torch.tensor([[4, 5, 6]])})
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_weight_and_missing_encoder_output_are_errors() -> None:
    with pytest.raises(ValueError, match="--ctc-weight must be >= 0"):
        _criterion(-0.5)
    with pytest.raises(ValueError, match="--ctc-weight needs a model that returns its encoder output"):
        _criterion().ctc_loss(MODEL, (torch.zeros(1), {"attn": None}), {"source": torch.tensor([[4]])})


def test_impossible_alignments_are_counted_and_left_out() -> None:
    """Issue 14 item 5: a transcript longer than the frames (with a blank between repeats) cannot be aligned."""
    crit = _criterion()
    # row 0: "a b c" in 4 frames (possible); row 1: "a a b" needs 4 frames (a blank between the a's) but has 3;
    # row 2: "c b a c" in 3 frames.
    net_output, _ = _aligned([[4, 5, 6, 0], [4, 0, 4], [6, 5, 4]], frames=4)
    source = torch.tensor([[4, 5, 6, 1], [4, 4, 5, 1], [6, 5, 4, 6]])
    loss, ntokens, impossible = crit.ctc_loss(MODEL, net_output, {"source": source})
    assert impossible == 2
    assert ntokens == 3  # only row 0's tokens: the others add nothing to the loss, so they must not dilute it
    alone, _ = _aligned([[4, 5, 6, 0]], frames=4)
    ref, ref_ntokens, _ = crit.ctc_loss(MODEL, alone, {"source": source[:1]})
    assert ref_ntokens == 3 and torch.allclose(loss, ref)
    # the same rows with enough frames are all possible and all counted
    net_output, _ = _aligned([[4, 5, 6, 0], [4, 0, 4, 5], [6, 5, 4, 6]], frames=4)
    _, ntokens, impossible = crit.ctc_loss(MODEL, net_output, {"source": source})
    assert (ntokens, impossible) == (10, 0)


def test_all_impossible_gives_zero_loss_with_a_graph() -> None:
    crit = _criterion()
    net_output, x = _aligned([[4, 5]], frames=2)
    x.requires_grad_(True)
    net_output[1]["encoder_out"]["encoder_out"] = [x]
    loss, ntokens, impossible = crit.ctc_loss(MODEL, net_output, {"source": torch.tensor([[4, 5, 6]])})
    assert (loss.item(), ntokens, impossible) == (0.0, 0, 1)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() == 0


@pytest.mark.parametrize("tokens, frames", [([4, 5, 6], 3), ([4, 4, 4], 5), ([4, 4, 5, 5], 6), ([6], 1), ([], 0)])
def test_min_frames_is_tokens_plus_repeats(tokens: list[int], frames: int) -> None:
    src = torch.tensor([tokens + [2, 1]])
    assert ctc_min_frames(src, src.ne(1) & src.ne(2)).tolist() == [frames]
    # and torch's CTC agrees: finite with exactly that many frames, infinite with one fewer
    for t in (frames, frames - 1):
        if t > 0 and tokens:
            lp = torch.randn(t, 1, 7).log_softmax(-1)
            val = torch.nn.functional.ctc_loss(lp, torch.tensor(tokens), torch.tensor([t]), torch.tensor([len(tokens)]),
                                               reduction="sum")
            assert bool(torch.isfinite(val)) is (t == frames), (tokens, t)


def test_impossible_count_is_logged() -> None:
    logs = [{"ctc_loss": 3.0, "ctc_ntokens": 3, "ctc_impossible": 2, "loss": 1.0, "nll_loss": 1.0, "ntokens": 5,
             "nsentences": 3, "sample_size": 5},
            {"ctc_loss": 1.0, "ctc_ntokens": 2, "ctc_impossible": 1, "loss": 1.0, "nll_loss": 1.0, "ntokens": 5,
             "nsentences": 3, "sample_size": 5}]
    with metrics.aggregate() as agg:
        SpeechAndTextTranslationCriterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["ctc_impossible"] == 3
    assert values["ctc_loss"] == pytest.approx(4.0 / 5 / math.log(2), abs=1e-3)
