"""The criterion's auxiliary CTC term (--ctc-weight): targets, lengths and blank on hand-built alignments."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fairseq.data import Dictionary

import cress_bitnet  # noqa: F401  (registers the criterion)
from cress_bitnet.criterions.speech_and_text_translation import SpeechAndTextTranslationCriterion


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
    loss, ntokens = crit.ctc_loss(MODEL, net_output, {"source": source})
    assert ntokens == 6  # </s> and <pad> are not CTC targets
    assert 0 <= loss.item() < 0.01

    wrong = torch.tensor([[4, 5, 6, 1], [4, 6, 2, 1]])  # merged repeat in row 1, swapped order in row 2
    wrong_loss, _ = crit.ctc_loss(MODEL, net_output, {"source": wrong})
    assert wrong_loss.item() > 10


def test_padded_frames_are_not_scored() -> None:
    crit = _criterion()
    net_output, _ = _aligned([[4, 0, 5, 5, 6], [6, 4]], frames=5)
    loss, _ = crit.ctc_loss(MODEL, net_output, {"source": torch.tensor([[4, 5, 6], [6, 4, 1]])})
    assert loss.item() < 0.01  # row 2's three padded frames predict 'b' and would cost ~36 nats if scored


def test_ctc_gradient_reaches_the_encoder_output() -> None:
    crit = _criterion()
    net_output, x = _aligned([[4, 5, 6, 0]], frames=4)
    x.mul_(0.1).requires_grad_(True)
    net_output[1]["encoder_out"]["encoder_out"] = [x]
    loss, _ = crit.ctc_loss(MODEL, net_output, {"source": torch.tensor([[4, 5, 6]])})
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_weight_and_missing_encoder_output_are_errors() -> None:
    with pytest.raises(ValueError, match="--ctc-weight must be >= 0"):
        _criterion(-0.5)
    with pytest.raises(ValueError, match="--ctc-weight needs a model that returns its encoder output"):
        _criterion().ctc_loss(MODEL, (torch.zeros(1), {"attn": None}), {"source": torch.tensor([[4]])})
