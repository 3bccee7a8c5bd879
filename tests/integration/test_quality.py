"""Issue 14 quality floor: a short FP run on a tiny learnable toy must translate what it heard.

12 training utterances of the toy corpus (one synthetic voice), a tiny filterbank HuBERT, 100 full-batch updates with
CTC on the transcript, then fairseq-generate on the same 12 utterances. Measured (see the issue 14 report): 100.0 BLEU
with seeds 1, 2 and 3; the same run with the speech encoder's output zeroed (a model that cannot hear, so it can only
learn the decoder's language model) reaches 4.4. The floor sits between them with room on both sides, so a
regression that cuts the audio path, the CTC targets or decoding fails here while an ordinary run passes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import CPU_ARGS, REPO, ToyData, fairseq, output, run_tool
from task_helpers import copy_data

BLEU_FLOOR = 60.0
N_UTTERANCES = 12
UPDATES = 100
MODEL = [
    "--arch", "hubert_transformer_postln", "--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
    "--encoder-layers", "1", "--encoder-attention-heads", "2", "--decoder-embed-dim", "64",
    "--decoder-ffn-embed-dim", "128", "--decoder-layers", "1", "--decoder-attention-heads", "2",
    "--conv-channels", "64", "--conv-kernel-sizes", "5", "--layernorm-embedding", "--share-decoder-input-output-embed",
    "--hubert-feature-grad-mult", "1.0", "--hubert-layerdrop", "0", "--dropout", "0",
]


@pytest.mark.slow
def test_short_fp_run_reaches_the_bleu_floor(toy: ToyData, tmp_path: Path) -> None:
    data = copy_data(toy, tmp_path)
    lines = (data / "train.tsv").read_text(encoding="utf-8").splitlines()
    (data / "train_small.tsv").write_text("\n".join(lines[: N_UTTERANCES + 1]) + "\n", encoding="utf-8")
    # A filterbank front end (mel band magnitudes at 25 Hz) learns from a few dozen utterances; a random one cannot.
    hubert_dir = tmp_path / "hubert"
    run_tool([sys.executable, "data_prep/make_tiny_checkpoints.py", "--out", str(hubert_dir), "--frontend",
              "filterbank", "--frame-pool", "4", "--dim", "32", "--ffn", "64", "--heads", "2", "--layers", "2",
              "--conv-dim", "40", "--no-verify"])
    save = tmp_path / "st"
    common = [str(data), "--user-dir", str(REPO / "cress_bitnet"), "--task", "speech_and_text_translation",
              "--config-yaml", "config.yaml"]
    fairseq("train", [
        *common, "--train-subset", "train_small", "--st-training", *MODEL,
        "--hubert-model-path", str(hubert_dir / "hubert_tiny_ls960.pt"),
        "--criterion", "speech_and_text_translation", "--label-smoothing", "0.1", "--ctc-weight", "1.0",
        "--optimizer", "adam", "--lr", "5e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--max-update", str(UPDATES), "--max-tokens", "2000000", "--required-batch-size-multiple", "1",
        "--save-dir", str(save), "--no-epoch-checkpoints", "--disable-validation", *CPU_ARGS,
    ], env={"OMP_NUM_THREADS": "1"})
    gen = output(fairseq("generate", [
        *common, "--gen-subset", "train_small", "--path", str(save / "checkpoint_last.pt"), "--max-tokens", "2000000",
        "--beam", "1", "--scoring", "sacrebleu", "--cpu",
    ], env={"OMP_NUM_THREADS": "1"}))
    assert len(re.findall(r"^H-\d+\t", gen, flags=re.M)) == N_UTTERANCES
    bleu = float(re.search(r"BLEU = (\d+\.\d+)", gen).group(1))
    assert bleu >= BLEU_FLOOR, f"BLEU {bleu} on the training utterances is below the floor {BLEU_FLOOR}"
