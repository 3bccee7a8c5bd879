#!/usr/bin/env bash
# 1-bit fine-tuning (SVCD): quant_transformer initialised from the FP ST baseline, with the chosen linear layers
# replaced by quantized ones (copied weights), trained like the baseline (onebit-st's recipe, without its fixed paths).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<EOF
Usage: TGT=de [VAR=value ...] scripts/train_svcd.sh [extra fairseq-train flags]

Builds quant_transformer from FP_CKPT (its architecture and HuBERT configuration come from that checkpoint, so no
HuBERT or MT file is needed), swaps the QUANT_TARGETS linear layers for QUANT_METHOD layers and fine-tunes on ST
(+ MT on the transcripts). Extra arguments are passed to fairseq-train last, so they override the defaults below.

Environment (default):
  TGT            target language: $LANGS (required)
  DATA_ROOT      prepared data root (\$REPO/data)
  DATA           prepared ST data of the pair (\$DATA_ROOT/en-\$TGT)
  TEXT_DATA      binarized MT text (\$DATA/binary)
  CKPT_ROOT      checkpoint root (\$REPO/checkpoints)
  FP_CKPT        FP ST checkpoint (\$CKPT_ROOT/en-\$TGT.st_baseline/checkpoint_best.pt)
  QUANT_TARGETS  what to quantize: cross_attn | decoder | self_attn | ffn | encoder | all | cross_attn.q ... (cross_attn)
  QUANT_METHOD   svcd (see cress_bitnet.quantization.QUANTIZERS)
  QUANT_INIT     svcd g/h init: signvalue (default: starts from the FP layer's function) | constraint (the paper's)
                 | unconstrained | svd
  QUANT_ACT      optional --quant-act (e.g. per_token)
  KD_WEIGHT      optional --kd-weight (distillation from FP_CKPT; 0 = off)
  SAVE_DIR       output folder (\$CKPT_ROOT/en-\$TGT.svcd_\$QUANT_TARGETS)
  TB_DIR         tensorboard log folder (\$SAVE_DIR/tensorboard)
  LR             1e-4         WARMUP      4000       CLIP_NORM     0.0
  MAX_TOKENS     2000000 (audio samples per batch)   BATCH_SIZE 32   MAX_TOKENS_TEXT 4096
  UPDATE_FREQ    2            WEIGHT_DECAY 0.0001    LABEL_SMOOTHING 0.1
  MAX_UPDATE     100000       MAX_EPOCH   45 (onebit-st)  PATIENCE   10
  MT_FINETUNE    1 (--mt-finetune)   EXT_MT 0 (--ext-mt-training)
  EVAL_BLEU      1 (validation BLEU, best checkpoint by BLEU)  EVAL_BEAM 8
  SEED           1            NUM_WORKERS 4 on GPU, 0 on CPU
  LOG_INTERVAL   100          SAVE_INTERVAL_UPDATES 0 (epoch checkpoints only)
  FP16           1 (use --fp16 when a GPU is present; ignored on CPU)
  PYTHON         interpreter with fairseq + cress_bitnet (\$REPO/.venv/bin/python)
EOF
}

recipe_start "$@"
FP_CKPT="${FP_CKPT:-$ST_DIR/checkpoint_best.pt}"
QUANT_TARGETS="${QUANT_TARGETS:-cross_attn}"
QUANT_METHOD="${QUANT_METHOD:-svcd}"
SAVE_DIR="${SAVE_DIR:-$CKPT_ROOT/en-$TGT.svcd_${QUANT_TARGETS//[^A-Za-z0-9_.-]/_}}"
TB_DIR="${TB_DIR:-$SAVE_DIR/tensorboard}"
require_dir "$DATA" "prepared data (DATA; run scripts/prep_mustc.sh)"
require_file "$FP_CKPT" "FP ST checkpoint (FP_CKPT; run scripts/train_st_baseline.sh)"

device_args DEVICE_ARGS
OPT_ARGS=(--quant-method "$QUANT_METHOD" --quant-targets "$QUANT_TARGETS")
if [[ "$QUANT_METHOD" == svcd ]]; then OPT_ARGS+=(--quant-init "${QUANT_INIT:-signvalue}"); fi
if [[ -n "${QUANT_ACT:-}" ]]; then OPT_ARGS+=(--quant-act "$QUANT_ACT"); fi
if [[ -n "${KD_WEIGHT:-}" ]]; then OPT_ARGS+=(--kd-weight "$KD_WEIGHT"); fi
if [[ "${MT_FINETUNE:-1}" == 1 ]]; then OPT_ARGS+=(--mt-finetune); fi
if [[ "${EXT_MT:-0}" == 1 || -d "$TEXT_DATA" ]]; then OPT_ARGS+=(--text-data "$TEXT_DATA"); fi
if [[ "${EXT_MT:-0}" == 1 ]]; then
    require_dir "$TEXT_DATA" "binarized MT text (TEXT_DATA) for EXT_MT=1"
    OPT_ARGS+=(--ext-mt-training)
fi
if [[ "${EVAL_BLEU:-1}" == 1 ]]; then
    OPT_ARGS+=(--eval-bleu --eval-bleu-args "{\"beam\": ${EVAL_BEAM:-8}}" --eval-bleu-print-samples
        --best-checkpoint-metric bleu --maximize-best-checkpoint-metric)
fi
if [[ "${SAVE_INTERVAL_UPDATES:-0}" != 0 ]]; then OPT_ARGS+=(--save-interval-updates "$SAVE_INTERVAL_UPDATES"); fi

mkdir -p "$SAVE_DIR"
log "SVCD fine-tuning en-$TGT: $QUANT_METHOD on $QUANT_TARGETS from $FP_CKPT -> $SAVE_DIR"
run_logged "$PYTHON" -m fairseq_cli.train "$DATA" \
    --user-dir "$USER_DIR" --task speech_and_text_translation --config-yaml config.yaml \
    --train-subset train --valid-subset dev --tgt-lang "$TGT" --st-training \
    --arch quant_transformer --pretrained-st-checkpoint "$FP_CKPT" \
    --criterion speech_and_text_translation --label-smoothing "${LABEL_SMOOTHING:-0.1}" --report-accuracy \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "${LR:-1e-4}" --lr-scheduler inverse_sqrt \
    --warmup-updates "${WARMUP:-4000}" --weight-decay "${WEIGHT_DECAY:-0.0001}" --clip-norm "${CLIP_NORM:-0.0}" \
    --max-tokens "${MAX_TOKENS:-2000000}" --batch-size "${BATCH_SIZE:-32}" \
    --max-tokens-text "${MAX_TOKENS_TEXT:-4096}" --update-freq "${UPDATE_FREQ:-2}" \
    --max-update "${MAX_UPDATE:-100000}" --max-epoch "${MAX_EPOCH:-45}" --patience "${PATIENCE:-10}" \
    --save-dir "$SAVE_DIR" --tensorboard-logdir "$TB_DIR" "${OPT_ARGS[@]}" \
    --seed "${SEED:-1}" --num-workers "$NUM_WORKERS" --no-progress-bar --log-format simple \
    --log-interval "${LOG_INTERVAL:-100}" --ddp-backend legacy_ddp "${DEVICE_ARGS[@]}" "$@"
log "done: $SAVE_DIR"
