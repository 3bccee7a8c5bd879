#!/usr/bin/env bash
# 1-bit fine-tuning (SVCD): quant_transformer initialised from the FP ST baseline, with the chosen linear layers
# replaced by quantized ones (copied weights), trained like the baseline (onebit-st's recipe, without its fixed paths).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/train_template.sh"

RECIPE_USAGE="TGT=de [VAR=value ...] scripts/train_svcd.sh [extra fairseq-train flags]"
RECIPE_ABOUT="Builds quant_transformer from FP_CKPT (its architecture and HuBERT configuration come from that
checkpoint, so no HuBERT or MT file is needed; a DeltaLM-mode baseline stays DeltaLM-shaped), swaps the
QUANT_TARGETS linear layers for QUANT_METHOD layers and fine-tunes on ST (+ MT on the transcripts).
Extra arguments are passed to fairseq-train last, so they override the defaults below."
RECIPE_TITLE="SVCD fine-tuning"
var FP_CKPT '$ST_DIR/checkpoint_best.pt' "FP ST checkpoint"
var QUANT_TARGETS cross_attn \
    "what to quantize: cross_attn | decoder | self_attn | ffn | encoder | all | cross_attn.q ..."
var QUANT_METHOD svcd "quantizer: svcd, bitnet, bitnet158, bcq, tsvd, minmax (cress_bitnet.quantization.METHODS)"
var QUANT_INIT signvalue "svcd g/h init: signvalue (starts from the FP layer's function) | constraint (the paper's)
    | unconstrained | svd"
var QUANT_ACT "" "optional --quant-act (e.g. per_token)"
var KD_WEIGHT "" "optional --kd-weight (distillation from FP_CKPT; 0 = off)"
var SAVE_DIR '$CKPT_ROOT/en-$TGT.svcd_${QUANT_TARGETS//[^A-Za-z0-9_.-]/_}' "output folder"
var MAX_EPOCH 45 "stop after this many epochs (onebit-st's 45)"
vars_st

recipe_args() {
    require_file "$FP_CKPT" "FP ST checkpoint (FP_CKPT; run scripts/train_st_baseline.sh)"
    log "$QUANT_METHOD on $QUANT_TARGETS from $FP_CKPT"
    RECIPE_ARGS+=(--arch quant_transformer --pretrained-st-checkpoint "$FP_CKPT"
        --quant-method "$QUANT_METHOD" --quant-targets "$QUANT_TARGETS")
    if [[ "$QUANT_METHOD" == svcd ]]; then RECIPE_ARGS+=(--quant-init "$QUANT_INIT"); fi
    if [[ -n "$QUANT_ACT" ]]; then RECIPE_ARGS+=(--quant-act "$QUANT_ACT"); fi
    if [[ -n "$KD_WEIGHT" ]]; then RECIPE_ARGS+=(--kd-weight "$KD_WEIGHT"); fi
    st_args
}

train_main "$@"
