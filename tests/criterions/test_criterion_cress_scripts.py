"""CRESS's own train/test scripts (ictnlp/CRESS ``cress/train_scripts``, ``cress/test_scripts``), with only their paths
changed, parse with fairseq's parsers against this plugin, and the training ones build their criterion."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from conftest import REPO
from fairseq import options
from fairseq.criterions import build_criterion
from fake_st_model import fake_task

import cress_bitnet  # noqa: F401

COMMON = ("--user-dir cress --config-yaml config.yaml --train-subset train --valid-subset dev "
          "--num-workers 4 --no-progress-bar --log-format json --log-interval 100 --ddp-backend=legacy_ddp "
          "--seed 1 --layernorm-embedding --fp16 --hubert-model-path checkpoints/hubert_base_ls960.pt "
          "--task speech_and_text_translation --arch hubert_transformer_postln --optimizer adam "
          "--adam-betas '(0.9, 0.98)' --lr-scheduler inverse_sqrt --label-smoothing 0.1")
ST = ("--text-data data/mustc/en-de/binary/ --tgt-lang de --max-tokens 2000000 --batch-size 32 "
      "--max-tokens-text 4096 --max-update 100000 --lr 1e-4 --weight-decay 0.0001 --warmup-updates 4000 "
      "--clip-norm 0.0 --update-freq 2 --st-training --eval-bleu --eval-bleu-args '{\"beam\": 8}' "
      "--eval-bleu-print-samples --best-checkpoint-metric bleu --maximize-best-checkpoint-metric")
ORACLE = ("--reg-loss-type jsd --reg-weight 1.0 --use-word-level-oracle --decay-k 15 --use-word-gumbel-noise "
          "--gumbel-temperature 1.0")
MT_INIT = "--load-pretrained-mt-encoder-decoder-from checkpoints/en-de.postln.wmt_pretrain.mustc_mt_pretrain/avg.pt"
TRAIN_SCRIPTS = {
    "train.en-x.postln.wmt_pretrain.sh": (
        "--text-data data/wmt/en-de/mustc_wmt_en_de/binary --tgt-lang de --save-dir checkpoints/wmt "
        "--max-tokens 1000000 --max-tokens-text 8192 --max-update 250000 --criterion speech_and_text_translation "
        "--lr 7e-4 --weight-decay 0.0 --save-interval-updates 5000 --warmup-updates 4000 --clip-norm 0.0 "
        "--update-freq 1 --ext-mt-training"),
    "train.en-x.postln.wmt_pretrain.mustc_mt_pretrain.sh": (
        "--text-data data/mustc/en-de/binary/ --tgt-lang de --save-dir checkpoints/mt --max-tokens 1000000 "
        "--max-tokens-text 8192 --max-update 100000 --criterion speech_and_text_translation --lr 1e-4 "
        "--warmup-updates 8000 --clip-norm 10.0 --update-freq 1 --patience 10 --ext-mt-training "
        "--load-pretrained-mt-encoder-decoder-from checkpoints/en-de.postln.wmt_pretrain/avg_last_5_epoch.pt"),
    "train.en-x.postln.wmt_pretrain.mustc_mt_pretrain.mustc_st+mt.sh": (
        f"{ST} --save-dir checkpoints/mtl --criterion speech_and_text_translation --patience 10 --mt-finetune "
        f"{MT_INIT}"),
    "train.en-x.postln.wmt_pretrain.mustc_mt_pretrain.mustc_st+mt.cress.sh": (
        f"{ST} --save-dir checkpoints/cress --criterion speech_and_text_translation_with_oracle_reg {ORACLE} "
        f"--max-epoch 20 {MT_INIT}"),
    "train.en-x.postln.wmt_pretrain.mustc_mt_pretrain.mustc_st+mt.cress_adaptive.sh": (
        f"{ST} --save-dir checkpoints/adaptive --criterion speech_and_text_translation_with_oracle_reg_adaptive "
        f"{ORACLE} --adaptive-base 0.7 --adaptive-scale 0.05 --adaptive-func linear_cosine --adaptive-weight-drop 0.0 "
        "--adaptive-st-loss --adaptive-mt-loss --adaptive-reg-loss --patience 10 "
        "--restore-file checkpoints/cress/checkpoint20.pt"),
}
TEST_SCRIPTS = {
    "test.en-x.st.sh": ("data/mustc/en-de --user-dir cress --config-yaml config.yaml --gen-subset tst-COMMON "
                        "--task speech_to_text_modified --path ckpt.pt --max-source-positions 900000 "
                        "--max-tokens 2000000 --beam 8 --lenpen 1.2 --scoring sacrebleu"),
    "test.en-x.mt.sh": ("data/mustc/en-de --text-data data/mustc/en-de/binary --tgt-lang de --user-dir cress "
                        "--config-yaml config.yaml --gen-subset test --task speech_and_text_translation --path ckpt.pt "
                        "--ext-mt-training --max-tokens 2000000 --max-tokens-text 4096 --beam 8 --lenpen 1.2 "
                        "--scoring sacrebleu"),
}


def argv(flags: str, data: str | None = "data/mustc/en-de") -> list[str]:
    """The script's words with its paths changed: the user dir is this plugin."""
    words = shlex.split(flags if data is None else f"{data} {COMMON} {flags}")
    return [str(REPO / "cress_bitnet") if w == "cress" and words[i - 1] == "--user-dir" else w
            for i, w in enumerate(words)]


@pytest.mark.parametrize("script", sorted(TRAIN_SCRIPTS))
def test_cress_train_script_parses_and_builds_its_criterion(script: str) -> None:
    args = options.parse_args_and_arch(options.get_training_parser(), argv(TRAIN_SCRIPTS[script]))
    assert args.arch == "hubert_transformer_postln" and args.task == "speech_and_text_translation"
    assert args.fp16 and args.ddp_backend == "legacy_ddp" and args.label_smoothing == 0.1
    criterion = build_criterion(args, fake_task(pretrained_st_checkpoint=None))
    assert type(criterion).__name__ == {
        "speech_and_text_translation": "SpeechAndTextTranslationCriterion",
        "speech_and_text_translation_with_oracle_reg": "OracleRegCriterion",
        "speech_and_text_translation_with_oracle_reg_adaptive": "OracleRegAdaptiveCriterion",
    }[args.criterion]
    assert criterion.eps == 0.1 and criterion.kd_weight == 0 and criterion.ctc_weight == 0
    if "cress" in script:
        assert criterion.reg_weight == 1.0 and criterion.decay_k == 15 and criterion.use_word_level_oracle
        assert criterion.use_word_gumbel_noise and criterion.gumbel_temperature == 1.0
    if "adaptive" in script:
        assert (criterion.adaptive_base, criterion.adaptive_scale, criterion.adaptive_weight_drop) == (0.7, 0.05, 0.0)
        assert criterion.adaptive_terms == {"st": True, "mt": True, "reg": True}
        assert Path(args.restore_file).name == "checkpoint20.pt"
    if script.endswith("st+mt.sh"):
        assert criterion.mt_finetune


@pytest.mark.parametrize("script", sorted(TEST_SCRIPTS))
def test_cress_test_script_parses(script: str) -> None:
    args = options.parse_args_and_arch(options.get_generation_parser(), argv(TEST_SCRIPTS[script], data=None))
    assert args.beam == 8 and args.lenpen == 1.2 and args.scoring == "sacrebleu" and args.path == "ckpt.pt"
    assert args.task == ("speech_to_text_modified" if ".st." in script else "speech_and_text_translation")
