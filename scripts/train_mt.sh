#!/usr/bin/env bash
# MT pretraining on the MuST-C text (CRESS stage 2, train.en-x.postln.wmt_pretrain.mustc_mt_pretrain.sh), then the
# average of the last AVG_LAST checkpoints (CRESS's avg_last_10_epoch.pt) as $SAVE_DIR/checkpoint_avg.pt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/train_template.sh"

RECIPE_USAGE="TGT=de [VAR=value ...] scripts/train_mt.sh [extra fairseq-train flags]"
RECIPE_ABOUT="Pretrains the text encoder + decoder of the ST model on MuST-C transcripts/translations
(--ext-mt-training), CRESS's way: the same task, architecture and dictionary as the ST model, so the ST recipe loads
the result by identity (encoder.transformer_layers.*) with --load-pretrained-mt-encoder-decoder-from. HuBERT is built
(it is part of the architecture) but frozen and unused: MT batches never reach it.
Extra arguments are passed to fairseq-train last, so they override the defaults below."
RECIPE_TITLE="MT pretraining"
var SAVE_DIR '$MT_DIR' "output folder"
vars_new_model
var INIT_MT "" "optional MT checkpoint to start from (CRESS expanded setting: the WMT-pretrained average)"
var WARMUP 8000 "warm-up updates"
var CLIP_NORM 10.0 "gradient norm clipping"
var MAX_TOKENS 1000000 "audio samples per speech batch (MT batches never use it)"
var BATCH_SIZE "" "utterances per speech batch (empty: no limit)"
var MAX_TOKENS_TEXT 8192 "tokens per MT batch"
var UPDATE_FREQ 1 "batches per update"
var WEIGHT_DECAY 0.0 "Adam weight decay"
var AVG_LAST 10 "checkpoints averaged into checkpoint_avg.pt (1 = copy of the newest)"

recipe_args() {
    require_dir "$TEXT_DATA" "binarized MT text (TEXT_DATA; run scripts/prep_mustc.sh)"
    new_model_args
    RECIPE_ARGS+=(--text-data "$TEXT_DATA" --ext-mt-training --freeze-hubert)
    if [[ -n "$INIT_MT" ]]; then
        require_file "$INIT_MT" "INIT_MT checkpoint"
        RECIPE_ARGS+=(--load-pretrained-mt-encoder-decoder-from "$INIT_MT")
    fi
}

after_training() {
    run_logged "$PYTHON" -m scripts.average_checkpoints --inputs "$SAVE_DIR" --num "$AVG_LAST" \
        --output "$SAVE_DIR/checkpoint_avg.pt"
}

train_main "$@"
