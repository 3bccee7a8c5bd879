#!/usr/bin/env bash
# MuST-C language pair -> raw-audio ST manifests + joint SentencePiece model + config.yaml, then the binarized MT text.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<EOF
Usage: TGT=de [VAR=value ...] scripts/prep_mustc.sh [extra data_prep/prep_mustc_data.py flags]

Runs data_prep/prep_mustc_data.py (manifests {train,dev,tst-COMMON}.tsv, spm_unigram\$VOCAB_SIZE.*, config.yaml)
and data_prep/prep_mt_data.py (fairseq-binarized {train,valid,test}.en-\$TGT.* for --text-data).
Both skip finished work on a rerun; pass --overwrite to redo the manifests and spm model.

Environment (default):
  TGT             target language: $LANGS (required)
  MUSTC_ROOT      MuST-C v1 root holding en-\$TGT/data/{split}/{wav,txt} (\$REPO/data/mustc)
  DATA_ROOT       prepared data root (\$REPO/data)
  DATA            prepared ST data of the pair (\$DATA_ROOT/en-\$TGT)
  TEXT_DATA       binarized MT text (\$DATA/binary)
  VOCAB_SIZE      SentencePiece vocabulary size (10000, CRESS; capped on small corpora)
  EXTRA_MT_TRAIN  optional PREFIX of extra parallel text PREFIX.en / PREFIX.\$TGT added to the MT train set
  PYTHON          interpreter with fairseq + cress_bitnet (\$REPO/.venv/bin/python)
EOF
}

recipe_start "$@"
MUSTC_ROOT="${MUSTC_ROOT:-$REPO/data/mustc}"
VOCAB_SIZE="${VOCAB_SIZE:-10000}"
if [[ ! -d "$MUSTC_ROOT/en-$TGT" && "$(basename "$MUSTC_ROOT")" != "en-$TGT" ]]; then
    die "MuST-C pair not found: $MUSTC_ROOT/en-$TGT (set MUSTC_ROOT to the folder holding en-$TGT/)"
fi
[[ "$VOCAB_SIZE" =~ ^[0-9]+$ ]] || die "VOCAB_SIZE must be a number (got '$VOCAB_SIZE')"

log "preparing en-$TGT: $MUSTC_ROOT -> $DATA"
run_logged "$PYTHON" "$REPO/data_prep/prep_mustc_data.py" --data-root "$MUSTC_ROOT" --tgt-lang "$TGT" \
    --out-dir "$DATA" --vocab-size "$VOCAB_SIZE" "$@"
MT_ARGS=()
if [[ -n "${EXTRA_MT_TRAIN:-}" ]]; then
    require_file "$EXTRA_MT_TRAIN.en" "extra MT source text (EXTRA_MT_TRAIN.en)"
    MT_ARGS=(--extra-train "$EXTRA_MT_TRAIN")
fi
run_logged "$PYTHON" "$REPO/data_prep/prep_mt_data.py" --data-dir "$DATA" --tgt-lang "$TGT" --out "$TEXT_DATA" \
    "${MT_ARGS[@]}"
log "done: ST data in $DATA, MT binary in $TEXT_DATA"
