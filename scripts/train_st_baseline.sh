#!/usr/bin/env bash
# Full-precision ST baseline: hubert_transformer initialised from HuBERT + the pretrained MT model, trained on speech
# translation with the MT loss on the transcripts (CRESS's MTL baseline, train.en-x.postln...mustc_st+mt.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/train_template.sh"

RECIPE_USAGE="TGT=de [VAR=value ...] scripts/train_st_baseline.sh [extra fairseq-train flags]"
RECIPE_ABOUT="Trains the FP speech translation model (--st-training; --mt-finetune adds the MT loss on each batch's
transcripts; EXT_MT=1 also mixes in external MT batches from TEXT_DATA). The defaults are CRESS's MTL
hyper-parameters. DeltaLM mode (DELTALM_DIR set, data prepared with the same DELTALM_DIR): hubert_deltalm_base
initialised from DeltaLM. Extra arguments are passed to fairseq-train last, so they override the defaults below."
RECIPE_TITLE="FP ST training"
var SAVE_DIR '$ST_DIR' "output folder"
vars_new_model
var MT_CKPT '$MT_DIR/checkpoint_avg.pt' "MT checkpoint for the text encoder/decoder (none = no MT initialisation)" \
    '$DELTALM_DIR/deltalm-base.pt'
var FREEZE_HUBERT 0 "1 = --freeze-hubert"
vars_st

recipe_args() {
    new_model_args
    if [[ "$MT_CKPT" != none ]]; then
        require_file "$MT_CKPT" "MT checkpoint (MT_CKPT; run scripts/train_mt.sh, or MT_CKPT=none)"
        RECIPE_ARGS+=(--load-pretrained-mt-encoder-decoder-from "$MT_CKPT")
    fi
    if [[ "$FREEZE_HUBERT" == 1 ]]; then RECIPE_ARGS+=(--freeze-hubert); fi
    st_args
}

train_main "$@"
