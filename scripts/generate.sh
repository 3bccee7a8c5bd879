#!/usr/bin/env bash
# Decode a test set with fairseq-generate and score it with sacreBLEU (CRESS's test.en-x.st.sh + avg_epoch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<EOF
Usage: TGT=de SAVE_DIR=checkpoints/en-de.st_baseline [VAR=value ...] scripts/generate.sh [extra fairseq-generate flags]

Averages the last AVG_LAST checkpoints of SAVE_DIR (or uses CKPT), decodes SUBSET with the beam size and length
penalty of TGT from configs/lang_table.tsv, and scores with sacreBLEU (case-sensitive, detokenized, 13a).
Writes the BLEU score (one number) to \$RESULTS_DIR/bleu.\$SUBSET.txt and the full fairseq-generate output to
\$RESULTS_DIR/generate.\$SUBSET.log. Extra arguments are passed to fairseq-generate last (they override the defaults).

Environment (default):
  TGT          target language: $LANGS (required)
  DATA_ROOT    prepared data root (\$REPO/data)
  DATA         prepared ST data of the pair (\$DATA_ROOT/en-\$TGT)
  CKPT_ROOT    checkpoint root (\$REPO/checkpoints)
  SAVE_DIR     checkpoint folder of the run (\$CKPT_ROOT/en-\$TGT.st_baseline)
  CKPT         checkpoint to decode; set it to skip averaging (default: the average written below)
  AVG_LAST     checkpoints averaged into \$SAVE_DIR/checkpoint_avg_last\$AVG_LAST.pt (10, CRESS); 0 = checkpoint_best.pt
  SUBSET       tst-COMMON
  BEAM         beam size (lang_table: column beam of TGT)
  LENPEN       length penalty (lang_table: column lenpen of TGT)
  LANG_TABLE   \$REPO/configs/lang_table.tsv
  MAX_TOKENS   2000000 (audio samples per batch)
  RESULTS_DIR  where bleu.\$SUBSET.txt and generate.\$SUBSET.log go (\$SAVE_DIR)
  FP16         1 (use --fp16 when a GPU is present; ignored on CPU)
  PYTHON       interpreter with fairseq + cress_bitnet (\$REPO/.venv/bin/python)
EOF
}

recipe_start "$@"
SAVE_DIR="${SAVE_DIR:-$ST_DIR}"
SUBSET="${SUBSET:-tst-COMMON}"
AVG_LAST="${AVG_LAST:-10}"
RESULTS_DIR="${RESULTS_DIR:-$SAVE_DIR}"
BEAM="${BEAM:-$(lang_table_value 2)}"
LENPEN="${LENPEN:-$(lang_table_value 3)}"
require_dir "$DATA" "prepared data (DATA; run scripts/prep_mustc.sh)"
require_file "$DATA/$SUBSET.tsv" "manifest of SUBSET=$SUBSET"
[[ "$AVG_LAST" =~ ^[0-9]+$ ]] || die "AVG_LAST must be a number (got '$AVG_LAST')"

if [[ -z "${CKPT:-}" ]]; then
    require_dir "$SAVE_DIR" "checkpoint folder (SAVE_DIR)"
    if [[ "$AVG_LAST" == 0 ]]; then
        CKPT="$SAVE_DIR/checkpoint_best.pt"
    else
        CKPT="$SAVE_DIR/checkpoint_avg_last$AVG_LAST.pt"
        run_logged "$PYTHON" "$REPO/scripts/average_checkpoints.py" --inputs "$SAVE_DIR" --num "$AVG_LAST" \
            --output "$CKPT"
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
    --gen-subset "$SUBSET" --path "$CKPT" --max-tokens "${MAX_TOKENS:-2000000}" \
    --beam "$BEAM" --lenpen "$LENPEN" --scoring sacrebleu \
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
