#!/usr/bin/env bash
# CRESS (Fang & Feng, ACL 2023): the ST model trained with the word-level oracle and ST/MT regularisation for
# CRESS_EPOCHS epochs, then the token-adaptive stage restoring that checkpoint (CRESS's ...cress.sh and
# ...cress_adaptive.sh, without their fixed paths).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/train_template.sh"

RECIPE_USAGE="TGT=de [VAR=value ...] scripts/train_cress.sh [extra fairseq-train flags]"
RECIPE_ABOUT="Stage 1 trains hubert_transformer (HuBERT + the MT model, as the baseline) with the criterion
speech_and_text_translation_with_oracle_reg for CRESS_EPOCHS epochs into SAVE_DIR; stage 2 restores its
checkpoint\${CRESS_EPOCHS}.pt (--reset-optimizer: the criterion changes) and trains with the _adaptive criterion
into ADAPTIVE_DIR. Extra arguments are passed to both fairseq-train runs last."
RECIPE_TITLE="CRESS"
var SAVE_DIR '$CKPT_ROOT/en-$TGT.cress' "stage 1 output folder"
var ADAPTIVE_DIR '$CKPT_ROOT/en-$TGT.cress_adaptive' "stage 2 output folder"
var CRESS_EPOCHS 20 "epochs of stage 1 (CRESS's 20); stage 2 restores checkpoint\$CRESS_EPOCHS.pt"
var CRITERION speech_and_text_translation_with_oracle_reg "stage 1 criterion"
var REG_WEIGHT 1.0 "--reg-weight (ST/MT output regularisation)"
var DECAY_K 15 "--decay-k of the oracle schedule"
var GUMBEL_TEMPERATURE 1.0 "--gumbel-temperature"
var ADAPTIVE_BASE 0.7 "--adaptive-base (stage 2)"
var ADAPTIVE_SCALE 0.05 "--adaptive-scale (stage 2)"
vars_new_model
var MT_CKPT '$MT_DIR/checkpoint_avg.pt' "MT checkpoint for the text encoder/decoder (none = no MT initialisation)" \
    '$DELTALM_DIR/deltalm-base.pt'
vars_st
var MT_FINETUNE 0 "1 = --mt-finetune (the CRESS criteria run the MT branch themselves: off)"

recipe_args() {
    new_model_args
    if [[ "$MT_CKPT" != none ]]; then
        require_file "$MT_CKPT" "MT checkpoint (MT_CKPT; run scripts/train_mt.sh, or MT_CKPT=none)"
        RECIPE_ARGS+=(--load-pretrained-mt-encoder-decoder-from "$MT_CKPT")
    fi
    RECIPE_ARGS+=(--reg-loss-type jsd --reg-weight "$REG_WEIGHT" --use-word-level-oracle --decay-k "$DECAY_K"
        --use-word-gumbel-noise --gumbel-temperature "$GUMBEL_TEMPERATURE")
    if [[ "$CRITERION" == *_adaptive ]]; then
        RECIPE_ARGS+=(--adaptive-base "$ADAPTIVE_BASE" --adaptive-scale "$ADAPTIVE_SCALE"
            --adaptive-func linear_cosine --adaptive-weight-drop 0.0 --adaptive-st-loss --adaptive-mt-loss
            --adaptive-reg-loss)
    fi
    st_args
}

train_prepare "$@"
MAX_EPOCH="$CRESS_EPOCHS" fairseq_train "$@"
STAGE1="$SAVE_DIR/checkpoint$CRESS_EPOCHS.pt"
require_file "$STAGE1" "stage 1 checkpoint (CRESS_EPOCHS=$CRESS_EPOCHS)"
SAVE_DIR="$ADAPTIVE_DIR" TB_DIR="$ADAPTIVE_DIR/tensorboard" CRITERION="${CRITERION}_adaptive" \
    fairseq_train "$@" --restore-file "$STAGE1" --reset-optimizer
log "done: $ADAPTIVE_DIR"
