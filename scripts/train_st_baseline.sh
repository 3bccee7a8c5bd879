#!/usr/bin/env bash
# Full-precision ST baseline: hubert_transformer initialised from HuBERT + the pretrained MT model, trained on speech
# translation with the MT loss on the transcripts (CRESS's MTL baseline, train.en-x.postln...mustc_st+mt.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<EOF
Usage: TGT=de [VAR=value ...] scripts/train_st_baseline.sh [extra fairseq-train flags]

Trains the FP speech translation model (--st-training; --mt-finetune adds the MT loss on each batch's transcripts;
EXT_MT=1 also mixes in external MT batches from TEXT_DATA). The defaults are CRESS's MTL hyper-parameters.
Extra arguments are passed to fairseq-train last, so they override the defaults below.

Environment (default):
  TGT            target language: $LANGS (required)
  DATA_ROOT      prepared data root (\$REPO/data)
  DATA           prepared ST data of the pair (\$DATA_ROOT/en-\$TGT)
  TEXT_DATA      binarized MT text (\$DATA/binary)
  CKPT_ROOT      checkpoint root (\$REPO/checkpoints)
  HUBERT         HuBERT checkpoint (\$CKPT_ROOT/hubert_base_ls960.pt)
  MT_CKPT        MT checkpoint for the text encoder/decoder (\$CKPT_ROOT/en-\$TGT.mt/checkpoint_avg.pt);
                 MT_CKPT=none trains without MT initialisation
  SAVE_DIR       output folder (\$CKPT_ROOT/en-\$TGT.st_baseline)
  TB_DIR         tensorboard log folder (\$SAVE_DIR/tensorboard)
  ARCH           hubert_transformer_postln (CRESS; hubert_transformer = pre-LN; must match the MT model)
  LR             1e-4         WARMUP      4000       CLIP_NORM     0.0
  MAX_TOKENS     2000000 (audio samples per batch)   BATCH_SIZE 32   MAX_TOKENS_TEXT 4096
  UPDATE_FREQ    2            WEIGHT_DECAY 0.0001    LABEL_SMOOTHING 0.1
  MAX_UPDATE     100000       MAX_EPOCH   0 (no limit)  PATIENCE   10
  MT_FINETUNE    1 (--mt-finetune)   EXT_MT 0 (--ext-mt-training)   FREEZE_HUBERT 0 (--freeze-hubert)
  EVAL_BLEU      1 (validation BLEU, best checkpoint by BLEU)  EVAL_BEAM 8 (beam of the validation BLEU)
  DROPOUT        (arch default 0.1)
  SEED           1            NUM_WORKERS 4 on GPU, 0 on CPU
  LOG_INTERVAL   100          SAVE_INTERVAL_UPDATES 0 (epoch checkpoints only)
  FP16           1 (use --fp16 when a GPU is present; ignored on CPU)
  PYTHON         interpreter with fairseq + cress_bitnet (\$REPO/.venv/bin/python)
EOF
}

recipe_start "$@"
SAVE_DIR="${SAVE_DIR:-$ST_DIR}"
TB_DIR="${TB_DIR:-$SAVE_DIR/tensorboard}"
ARCH="${ARCH:-hubert_transformer_postln}"
MT_CKPT="${MT_CKPT:-$MT_DIR/checkpoint_avg.pt}"
require_dir "$DATA" "prepared data (DATA; run scripts/prep_mustc.sh)"
require_file "$HUBERT" "HuBERT checkpoint (HUBERT)"

device_args DEVICE_ARGS
OPT_ARGS=()
if [[ "$MT_CKPT" != none ]]; then
    require_file "$MT_CKPT" "MT checkpoint (MT_CKPT; run scripts/train_mt.sh, or MT_CKPT=none)"
    OPT_ARGS+=(--load-pretrained-mt-encoder-decoder-from "$MT_CKPT")
fi
if [[ "${MT_FINETUNE:-1}" == 1 ]]; then OPT_ARGS+=(--mt-finetune); fi
if [[ "${FREEZE_HUBERT:-0}" == 1 ]]; then OPT_ARGS+=(--freeze-hubert); fi
if [[ "${EXT_MT:-0}" == 1 || -d "$TEXT_DATA" ]]; then OPT_ARGS+=(--text-data "$TEXT_DATA"); fi
if [[ "${EXT_MT:-0}" == 1 ]]; then
    require_dir "$TEXT_DATA" "binarized MT text (TEXT_DATA) for EXT_MT=1"
    OPT_ARGS+=(--ext-mt-training)
fi
if [[ "${EVAL_BLEU:-1}" == 1 ]]; then
    OPT_ARGS+=(--eval-bleu --eval-bleu-args "{\"beam\": ${EVAL_BEAM:-8}}" --eval-bleu-print-samples
        --best-checkpoint-metric bleu --maximize-best-checkpoint-metric)
fi
if [[ -n "${DROPOUT:-}" ]]; then OPT_ARGS+=(--dropout "$DROPOUT"); fi
if [[ "${SAVE_INTERVAL_UPDATES:-0}" != 0 ]]; then OPT_ARGS+=(--save-interval-updates "$SAVE_INTERVAL_UPDATES"); fi

mkdir -p "$SAVE_DIR"
log "FP ST training en-$TGT ($ARCH) -> $SAVE_DIR"
run_logged "$PYTHON" -m fairseq_cli.train "$DATA" \
    --user-dir "$USER_DIR" --task speech_and_text_translation --config-yaml config.yaml \
    --train-subset train --valid-subset dev --tgt-lang "$TGT" --st-training \
    --arch "$ARCH" --layernorm-embedding --hubert-model-path "$HUBERT" \
    --criterion speech_and_text_translation --label-smoothing "${LABEL_SMOOTHING:-0.1}" --report-accuracy \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "${LR:-1e-4}" --lr-scheduler inverse_sqrt \
    --warmup-updates "${WARMUP:-4000}" --weight-decay "${WEIGHT_DECAY:-0.0001}" --clip-norm "${CLIP_NORM:-0.0}" \
    --max-tokens "${MAX_TOKENS:-2000000}" --batch-size "${BATCH_SIZE:-32}" \
    --max-tokens-text "${MAX_TOKENS_TEXT:-4096}" --update-freq "${UPDATE_FREQ:-2}" \
    --max-update "${MAX_UPDATE:-100000}" --max-epoch "${MAX_EPOCH:-0}" --patience "${PATIENCE:-10}" \
    --save-dir "$SAVE_DIR" --tensorboard-logdir "$TB_DIR" "${OPT_ARGS[@]}" \
    --seed "${SEED:-1}" --num-workers "$NUM_WORKERS" --no-progress-bar --log-format simple \
    --log-interval "${LOG_INTERVAL:-100}" --ddp-backend legacy_ddp "${DEVICE_ARGS[@]}" "$@"
log "done: $SAVE_DIR"
