"""Issue 7 end to end: a trained quant_transformer checkpoint → cress-bitnet-export → fairseq-generate loads the packed
file directly and produces the same hypotheses as the unpacked model (greedy and beam)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from conftest import ToyData, fairseq, generate_args, output, run_tool

import cress_bitnet  # noqa: F401


def hypotheses(log: str) -> dict[int, str]:
    return {int(i): h for i, h in re.findall(r"^H-(\d+)\t\S+\t(.*)$", log, flags=re.M)}


def test_export_then_generate_gives_identical_hypotheses(toy: ToyData, svcd_decoder_checkpoint: Path,
                                                         tmp_path: Path) -> None:
    packed = tmp_path / "packed.pt"
    report = output(run_tool([sys.executable, "-m", "cress_bitnet.export", str(svcd_decoder_checkpoint),
                              str(packed), "--json", str(tmp_path / "sizes.json")]))
    assert "decoder.layers.0.encoder_attn.q_proj" in report
    state = torch.load(packed, weights_only=True)
    assert state["cfg"]["model"].quant_packed is True
    assert "last_optimizer_state" not in state
    names = [k for k in state["model"] if k.startswith("decoder.layers.0.fc1.")]
    assert not any(k.endswith(".weight") and state["model"][k].is_floating_point() and state["model"][k].dim() == 2
                   for k in names), names  # no latent fp weight left for a swapped layer
    assert packed.stat().st_size < svcd_decoder_checkpoint.stat().st_size
    for beam in ("1", "3"):
        ref = hypotheses(output(fairseq("generate", generate_args(toy, svcd_decoder_checkpoint, "--beam", beam))))
        got = hypotheses(output(fairseq("generate", generate_args(toy, packed, "--beam", beam))))
        assert len(ref) == 6 and got == ref, f"beam {beam}"
