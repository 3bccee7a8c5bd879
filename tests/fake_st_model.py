"""A tiny stand-in for ``hubert_transformer`` with the same call surface the criteria use (encoder, decoder, forward,
``get_normalized_probs``, ``get_targets``, ``set_epoch``), so criterion math can be checked by hand in milliseconds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from torch import Tensor, nn

VOCAB = 9  # <s>=0, <pad>=1, </s>=2, <unk>=3, a..e = 4..8
PAD, EOS = 1, 2


def dictionary() -> Dictionary:
    d = Dictionary()
    for sym in "abcde":
        d.add_symbol(sym)
    assert len(d) == VOCAB
    return d


def fake_task(**args: Any) -> SimpleNamespace:
    return SimpleNamespace(target_dictionary=dictionary(), args=SimpleNamespace(**args))


class FakeEncoder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.audio = nn.Linear(1, dim)

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, mode: str = "st") -> dict[str, list[Tensor]]:
        if mode == "st":
            x = torch.tanh(self.audio(src_tokens.unsqueeze(-1).to(self.audio.weight)))
            padding = torch.arange(src_tokens.size(1))[None, :] >= src_lengths[:, None]
        else:
            x = self.embed(src_tokens)
            padding = src_tokens.eq(PAD)
        return {"encoder_out": [x.transpose(0, 1)], "encoder_padding_mask": [padding]}


class FakeDecoder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.proj = nn.Linear(dim, VOCAB)

    def output_layer(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def forward(self, prev_output_tokens: Tensor, encoder_out: dict[str, list[Tensor]]) -> tuple[Tensor, dict]:
        enc = encoder_out["encoder_out"][0]  # S x B x C
        keep = (~encoder_out["encoder_padding_mask"][0]).t().unsqueeze(-1).to(enc)
        context = (enc * keep).sum(0) / keep.sum(0).clamp(min=1)  # B x C
        # causal: position t sees tokens <= t (cumulative mean of the prefix embeddings)
        emb = self.embed(prev_output_tokens)
        steps = torch.arange(1, emb.size(1) + 1, dtype=emb.dtype)[None, :, None]
        h = torch.tanh(emb.cumsum(1) / steps + context.unsqueeze(1))  # B x T x C
        return self.output_layer(h), {"attn": [None], "inner_states": [h.transpose(0, 1)]}


class FakeSTModel(nn.Module):
    def __init__(self, seed: int, dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = FakeEncoder(dim)
        self.decoder = FakeDecoder(dim)
        self.epochs: list[int] = []
        self.seen_prev: list[Tensor] = []

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, mode: str, prev_output_tokens: Tensor) -> Any:
        self.seen_prev.append(prev_output_tokens.clone())
        encoder_out = self.encoder(src_tokens, src_lengths, mode)
        x, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out)
        extra["encoder_out"] = encoder_out
        return x, extra

    def get_normalized_probs(self, net_output: Any, log_probs: bool, sample: Any = None) -> Tensor:
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def get_targets(self, sample: dict, net_output: Any) -> Tensor:
        return sample["target"]

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def padded_batch(mode: str = "st") -> dict[str, Any]:
    """Three sentences of target lengths 4, 3, 2 (right-padded), audio of 5/4/3 samples, transcripts of 3/2/2."""
    target = torch.tensor([[4, 5, 6, EOS], [7, 8, EOS, PAD], [5, EOS, PAD, PAD]])
    prev = torch.tensor([[EOS, 4, 5, 6], [EOS, 7, 8, PAD], [EOS, 5, PAD, PAD]])
    source = torch.tensor([[6, 5, EOS], [4, EOS, PAD], [8, EOS, PAD]])
    gen = torch.Generator().manual_seed(3)
    audio = torch.randn(3, 5, generator=gen)
    audio_lengths = torch.tensor([5, 4, 3])
    net_input = {"src_tokens": audio, "src_lengths": audio_lengths, "mode": "st", "prev_output_tokens": prev}
    if mode == "ext_mt":
        net_input = {"src_tokens": source, "src_lengths": torch.tensor([3, 2, 2]), "mode": "ext_mt",
                     "prev_output_tokens": prev}
    return {"net_input": net_input, "source": source, "source_lengths": torch.tensor([3, 2, 2]), "target": target,
            "ntokens": int(target.ne(PAD).sum()), "nsentences": 3}
