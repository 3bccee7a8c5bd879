#!/usr/bin/env bash
# Decode a test set with fairseq-generate and score it with sacreBLEU (CRESS's test.en-x.st.sh + avg_epoch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RECIPE_USAGE="TGT=de SAVE_DIR=checkpoints/en-de.st_baseline [VAR=value ...] scripts/generate.sh [extra fairseq-generate flags]"
RECIPE_ABOUT="Averages the last AVG_LAST checkpoints of SAVE_DIR (or uses CKPT), decodes SUBSET with the beam size and
length penalty of TGT from LANG_TABLE, and scores with sacreBLEU (case-sensitive, detokenized, 13a). Writes the BLEU
score (one number) to \$RESULTS_DIR/bleu.\$SUBSET.txt and the full fairseq-generate output to
\$RESULTS_DIR/generate.\$SUBSET.log. The SentencePiece model and dictionary are the ones DATA's config.yaml names
(DeltaLM's after a DeltaLM-mode prep). Extra arguments are passed to fairseq-generate last (they override the defaults)."
vars_data
vars_text_data
vars_ckpt
var MODE st "st: decode speech (SUBSET's manifest); mt: decode the binarized text of TEXT_DATA (CRESS's test.en-x.mt.sh)"
var SAVE_DIR '$ST_DIR' "checkpoint folder of the run"
var CKPT "" "checkpoint to decode; set it to skip averaging (empty: the average written below)"
var AVG_LAST 10 "checkpoints averaged into \$SAVE_DIR/checkpoint_avg_last\$AVG_LAST.pt (CRESS); 0 = checkpoint_best.pt"
var SUBSET '$([[ $MODE == mt ]] && echo test || echo tst-COMMON)' "split to decode (a manifest; MODE=mt: a text split)"
vars_lang_table
var BEAM '$(lang_table_value 2)' "beam size (LANG_TABLE's beam column for TGT)"
var LENPEN '$(lang_table_value 3)' "length penalty (LANG_TABLE's lenpen column for TGT)"
var MAX_TOKENS 2000000 "audio samples per batch"
var RESULTS_DIR '$SAVE_DIR' "where bleu.\$SUBSET.txt and generate.\$SUBSET.log go"
vars_fp16
vars_python

recipe_start "$@"
require_dir "$DATA" "prepared data (DATA; run scripts/prep_mustc.sh)"
MODE_ARGS=()
case "$MODE" in
    st) require_file "$DATA/$SUBSET.tsv" "manifest of SUBSET=$SUBSET" ;;
    mt) require_file "$TEXT_DATA/$SUBSET.en-$TGT.en.bin" "binarized text of SUBSET=$SUBSET (TEXT_DATA)"
        MODE_ARGS=(--text-data "$TEXT_DATA" --ext-mt-training --max-tokens-text 4096) ;;
    *) die "MODE must be st or mt (got '$MODE')" ;;
esac
[[ "$AVG_LAST" =~ ^[0-9]+$ ]] || die "AVG_LAST must be a number (got '$AVG_LAST')"

if [[ -z "$CKPT" ]]; then
    require_dir "$SAVE_DIR" "checkpoint folder (SAVE_DIR)"
    if [[ "$AVG_LAST" == 0 ]]; then
        CKPT="$SAVE_DIR/checkpoint_best.pt"
    else
        CKPT="$SAVE_DIR/checkpoint_avg_last$AVG_LAST.pt"
        run_logged "$PYTHON" -m scripts.average_checkpoints --inputs "$SAVE_DIR" --num "$AVG_LAST" --output "$CKPT"
    fi
fi
require_file "$CKPT" "checkpoint (CKPT)"

device_args DEVICE_ARGS
mkdir -p "$RESULTS_DIR"
GEN_LOG="$RESULTS_DIR/generate.$SUBSET.log"
BLEU_FILE="$RESULTS_DIR/bleu.$SUBSET.txt"
log "decoding $SUBSET with $CKPT (beam $BEAM, lenpen $LENPEN) -> $GEN_LOG"
if ! run_logged "$PYTHON" -m fairseq_cli.generate "$DATA" \
    --user-dir "$USER_DIR" --task speech_and_text_translation --config-yaml config.yaml --tgt-lang "$TGT" \
    --gen-subset "$SUBSET" --path "$CKPT" --max-tokens "$MAX_TOKENS" \
    --beam "$BEAM" --lenpen "$LENPEN" --scoring sacrebleu "${MODE_ARGS[@]}" \
    "${DEVICE_ARGS[@]}" "$@" >"$GEN_LOG" 2>&1; then
    tail -n 20 "$GEN_LOG" >&2
    die "fairseq-generate failed; full output in $GEN_LOG"
fi
LINE="$(grep -E "^Generate $SUBSET with beam=[0-9]+: BLEU = " "$GEN_LOG" | tail -n 1 || true)"
[[ -n "$LINE" ]] || die "no BLEU line in $GEN_LOG"
SCORE="$(sed -E 's/.*BLEU = ([0-9.]+).*/\1/' <<<"$LINE")"
echo "$SCORE" >"$BLEU_FILE"
echo "$LINE"
log "BLEU $SCORE -> $BLEU_FILE"
