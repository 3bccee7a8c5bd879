#!/usr/bin/env bash
# MT pretraining on the MuST-C text (CRESS stage 2, train.en-x.postln.wmt_pretrain.mustc_mt_pretrain.sh), then the
# average of the last AVG_LAST checkpoints (CRESS's avg_last_10_epoch.pt) as $SAVE_DIR/checkpoint_avg.pt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<EOF
Usage: TGT=de [VAR=value ...] scripts/train_mt.sh [extra fairseq-train flags]

Pretrains the text encoder + decoder of the ST model on MuST-C transcripts/translations (--ext-mt-training),
CRESS's way: the same task, architecture and dictionary as the ST model, so the ST recipe loads the result by
identity (encoder.transformer_layers.*) with --load-pretrained-mt-encoder-decoder-from. HuBERT is built (it is part
of the architecture) but frozen and unused: MT batches never reach it.
Extra arguments are passed to fairseq-train last, so they override the defaults below.

Environment (default):
  TGT            target language: $LANGS (required)
  DATA_ROOT      prepared data root (\$REPO/data)
  DATA           prepared ST data of the pair (\$DATA_ROOT/en-\$TGT)
  TEXT_DATA      binarized MT text (\$DATA/binary)
  CKPT_ROOT      checkpoint root (\$REPO/checkpoints)
  HUBERT         HuBERT checkpoint, builds the speech branch (\$CKPT_ROOT/hubert_base_ls960.pt)
  SAVE_DIR       output folder (\$CKPT_ROOT/en-\$TGT.mt)
  TB_DIR         tensorboard log folder (\$SAVE_DIR/tensorboard)
  INIT_MT        optional MT checkpoint to start from (CRESS expanded setting: the WMT-pretrained average)
  ARCH           hubert_transformer_postln (must match the ST recipe's ARCH)
  LR             1e-4         WARMUP     8000       CLIP_NORM    10.0
  MAX_UPDATE     100000       MAX_EPOCH  0 (no limit)  PATIENCE  10
  MAX_TOKENS_TEXT 8192        UPDATE_FREQ 1          WEIGHT_DECAY 0.0
  LABEL_SMOOTHING 0.1         DROPOUT    (arch default 0.1)
  SEED           1            NUM_WORKERS 4 on GPU, 0 on CPU
  LOG_INTERVAL   100          SAVE_INTERVAL_UPDATES 0 (epoch checkpoints only)
  AVG_LAST       10 (checkpoints averaged into checkpoint_avg.pt; 1 = copy of the newest)
  FP16           1 (use --fp16 when a GPU is present; ignored on CPU)
  PYTHON         interpreter with fairseq + cress_bitnet (\$REPO/.venv/bin/python)
EOF
}

recipe_start "$@"
SAVE_DIR="${SAVE_DIR:-$MT_DIR}"
TB_DIR="${TB_DIR:-$SAVE_DIR/tensorboard}"
ARCH="${ARCH:-hubert_transformer_postln}"
require_dir "$DATA" "prepared data (DATA; run scripts/prep_mustc.sh)"
require_dir "$TEXT_DATA" "binarized MT text (TEXT_DATA; run scripts/prep_mustc.sh)"
require_file "$HUBERT" "HuBERT checkpoint (HUBERT)"

device_args DEVICE_ARGS
INIT_ARGS=()
if [[ -n "${INIT_MT:-}" ]]; then
    require_file "$INIT_MT" "INIT_MT checkpoint"
    INIT_ARGS=(--load-pretrained-mt-encoder-decoder-from "$INIT_MT")
fi
OPT_ARGS=()
[[ -n "${DROPOUT:-}" ]] && OPT_ARGS+=(--dropout "$DROPOUT")
[[ "${SAVE_INTERVAL_UPDATES:-0}" != 0 ]] && OPT_ARGS+=(--save-interval-updates "$SAVE_INTERVAL_UPDATES")

mkdir -p "$SAVE_DIR"
log "MT pretraining en-$TGT -> $SAVE_DIR"
run_logged "$PYTHON" -m fairseq_cli.train "$DATA" \
    --user-dir "$USER_DIR" --task speech_and_text_translation --config-yaml config.yaml \
    --train-subset train --valid-subset dev --tgt-lang "$TGT" --text-data "$TEXT_DATA" --ext-mt-training \
    --arch "$ARCH" --layernorm-embedding --hubert-model-path "$HUBERT" --freeze-hubert "${INIT_ARGS[@]}" \
    --criterion speech_and_text_translation --label-smoothing "${LABEL_SMOOTHING:-0.1}" --report-accuracy \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "${LR:-1e-4}" --lr-scheduler inverse_sqrt \
    --warmup-updates "${WARMUP:-8000}" --weight-decay "${WEIGHT_DECAY:-0.0}" --clip-norm "${CLIP_NORM:-10.0}" \
    --max-tokens 1000000 --max-tokens-text "${MAX_TOKENS_TEXT:-8192}" --update-freq "${UPDATE_FREQ:-1}" \
    --max-update "${MAX_UPDATE:-100000}" --max-epoch "${MAX_EPOCH:-0}" --patience "${PATIENCE:-10}" \
    --save-dir "$SAVE_DIR" --tensorboard-logdir "$TB_DIR" "${OPT_ARGS[@]}" \
    --seed "${SEED:-1}" --num-workers "$NUM_WORKERS" --no-progress-bar --log-format simple \
    --log-interval "${LOG_INTERVAL:-100}" --ddp-backend legacy_ddp "${DEVICE_ARGS[@]}" "$@"

run_logged "$PYTHON" "$REPO/scripts/average_checkpoints.py" --inputs "$SAVE_DIR" --num "${AVG_LAST:-10}" \
    --output "$SAVE_DIR/checkpoint_avg.pt"
log "done: $SAVE_DIR/checkpoint_avg.pt"
