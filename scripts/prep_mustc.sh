#!/usr/bin/env bash
# MuST-C language pair -> raw-audio ST manifests + joint SentencePiece model + config.yaml, then the binarized MT text.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RECIPE_USAGE="TGT=de [VAR=value ...] scripts/prep_mustc.sh [extra data_prep.prep_mustc_data flags]"
RECIPE_ABOUT="Runs python -m data_prep.prep_mustc_data (manifests {train,dev,tst-COMMON}.tsv, spm_unigram\$VOCAB_SIZE.*,
config.yaml) and python -m data_prep.prep_mt_data (fairseq-binarized {train,valid,test}.en-\$TGT.* for --text-data).
With SPM_MODEL and VOCAB (the DeltaLM mode sets both) no SentencePiece model is trained: the data is encoded with
that model and dictionary, after checking that the dictionary holds every piece the data uses.
Both steps skip finished work on a rerun; pass --overwrite to redo the manifests and spm model."
vars_data
vars_text_data
var MUSTC_ROOT '$REPO/data/mustc' "MuST-C v1 root holding en-\$TGT/data/{split}/{wav,txt}"
var VOCAB_SIZE 10000 "SentencePiece vocabulary size to train (CRESS; capped on small corpora)"
var DELTALM_DIR "" "DeltaLM mode: folder of the DeltaLM release (deltalm-base.pt, spm.model, dict.txt)"
var SPM_MODEL "" "existing SentencePiece model to encode with (empty: train one)" '$DELTALM_DIR/spm.model'
var VOCAB "" "fairseq dictionary of SPM_MODEL" '$DELTALM_DIR/dict.txt'
var EXTRA_MT_TRAIN "" "optional PREFIX of extra parallel text PREFIX.en / PREFIX.\$TGT added to the MT train set"
vars_python

recipe_start "$@"
if [[ ! -d "$MUSTC_ROOT/en-$TGT" && "$(basename "$MUSTC_ROOT")" != "en-$TGT" ]]; then
    die "MuST-C pair not found: $MUSTC_ROOT/en-$TGT (set MUSTC_ROOT to the folder holding en-$TGT/)"
fi
[[ "$VOCAB_SIZE" =~ ^[0-9]+$ ]] || die "VOCAB_SIZE must be a number (got '$VOCAB_SIZE')"
ST_ARGS=(--vocab-size "$VOCAB_SIZE")
MT_ARGS=()
if [[ -n "$SPM_MODEL" || -n "$VOCAB" ]]; then
    [[ -n "$SPM_MODEL" && -n "$VOCAB" ]] || die "set both SPM_MODEL and VOCAB (or DELTALM_DIR), or neither"
    require_file "$SPM_MODEL" "SentencePiece model (SPM_MODEL)"
    require_file "$VOCAB" "fairseq dictionary (VOCAB)"
    ST_ARGS=(--spm-model "$SPM_MODEL" --vocab "$VOCAB")
    MT_ARGS=(--deltalm --spm "$SPM_MODEL" --dict "$VOCAB")
fi

log "preparing en-$TGT: $MUSTC_ROOT -> $DATA"
run_logged "$PYTHON" -m data_prep.prep_mustc_data --data-root "$MUSTC_ROOT" --tgt-lang "$TGT" --out-dir "$DATA" \
    "${ST_ARGS[@]}" "$@"
if [[ -n "$EXTRA_MT_TRAIN" ]]; then
    require_file "$EXTRA_MT_TRAIN.en" "extra MT source text (EXTRA_MT_TRAIN.en)"
    MT_ARGS+=(--extra-train "$EXTRA_MT_TRAIN")
fi
run_logged "$PYTHON" -m data_prep.prep_mt_data --data-dir "$DATA" --tgt-lang "$TGT" --out "$TEXT_DATA" "${MT_ARGS[@]}"
log "done: ST data in $DATA, MT binary in $TEXT_DATA"
