#!/usr/bin/env bash
# The SVCD paper's analyses on the CPU demo's FP model: 1-bit cross-attention sub-modules (paper's setting vs ours),
# fp16 training curves of every g/h init, SVCD vs BitNet in fp16, BLEU retention vs fine-tuning updates, paper.md.
set -euo pipefail
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$SCRIPTS/common.sh"
source "$SCRIPTS/stage_runner.sh"

RECIPE_USAGE="[VAR=value ...] scripts/reproduce_paper.sh [--tiny] [--fresh]"
RECIPE_ABOUT="Needs the demo's corpus, HuBERT, MT and FP model in \$OUT (scripts/demo.sh with the same OUT); when they
are missing it runs scripts/demo.sh first (DEMO_* variables apply). Writes, under \$OUT:
  submodules.md/json   SVCD 1-bit on cross-attention q, k, v, out, all four, and the whole decoder, each fine-tuned
                       PAPER_SUB_UPDATES updates, in the paper's setting (constraint init, --quant-act seed) and ours
                       (signvalue init, per-token 8-bit activations); BLEU and % of FP
  init_curves.png      fp16 (CPU) training loss of every init in PAPER_INITS on the decoder, gradient overflows
                       marked
  fp16_bitnet.png/md   SVCD vs BitNet b1 / b1.58 in fp16 on the decoder: loss, loss scale, overflows
  retention.png/md     % of FP BLEU after each of PAPER_RET_UPDATES updates of each init, decoder and cross-attention
                       (0 = the swapped model before any update, scripts/swapped_checkpoint.py)
  paper.json, paper.md every number above next to the paper's claims
  logs/paper_*.log, stamps/paper_*.done, runs/paper/<run>/   as in the demo
A rerun skips finished stages and finished runs (a run is finished when its decodes exist); --fresh redoes them.
All runs of one setting share one learning-rate schedule (warmup PAPER_WARMUP), so a run's checkpoint after k updates
is what a k-update run would give: the retention points and the sub-module table come from the same runs.
--tiny: minute-sized settings for tests (a tiny demo, 2-update runs, 6 test segments, inits constraint and
calibrated only); variables set in the environment still win."
var OUT '$REPO/demo_out' "output folder (the demo's)"
var PAPER_SUB_UPDATES 100 "updates of every sub-module run"
var PAPER_RET_UPDATES "0 25 50 100 200" "retention points, space separated (the last is the run length)"
var PAPER_CURVE_UPDATES 50 "updates of the fp16 curve runs (CPU fp16 is slow: ~2.5 s/update at the demo size)"
var PAPER_INITS "constraint unconstrained svd signvalue calibrated" "inits compared"
var PAPER_LR 5e-4 "fine-tuning learning rate (the demo's)"
var PAPER_WARMUP 25 "warmup updates of every fine-tuning run"
var PAPER_BEAM 1 "beam of every decode, FP included (1: greedy keeps 60 decodes affordable)"
var PAPER_CALIB_SAMPLES 32 "utterances greedy-decoded for the calibrated init"
var PAPER_BATCH 16 "batch size in utterances"
var PAPER_SEED 1 "training seed"
var PAPER_STAGES "fp_bleu retention submodules fp16 report" "stages to run"
var OMP_NUM_THREADS 1 "torch CPU threads per process (see scripts/demo.sh)"
vars_python

parse_switches tiny fresh -- "$@"
export TGT=de
if [[ "$TINY" == 1 ]]; then  # the tiny demo's sizes (tests/conftest.py TINY_DEMO) and 2-update runs
    export DEMO_TRAIN="${DEMO_TRAIN:-24}" DEMO_DEV="${DEMO_DEV:-6}" DEMO_TEST="${DEMO_TEST:-6}"
    export DEMO_VOCAB="${DEMO_VOCAB:-200}" DEMO_DIM="${DEMO_DIM:-32}" DEMO_FFN="${DEMO_FFN:-64}"
    export DEMO_LAYERS="${DEMO_LAYERS:-2}" DEMO_HEADS="${DEMO_HEADS:-2}" DEMO_HUBERT_DIM="${DEMO_HUBERT_DIM:-32}"
    export DEMO_HUBERT_FFN="${DEMO_HUBERT_FFN:-64}" DEMO_HUBERT_LAYERS="${DEMO_HUBERT_LAYERS:-2}"
    export DEMO_HUBERT_HEADS="${DEMO_HUBERT_HEADS:-2}" DEMO_HUBERT_CONV="${DEMO_HUBERT_CONV:-48}"
    export DEMO_MT_UPDATES="${DEMO_MT_UPDATES:-3}" DEMO_ST_UPDATES="${DEMO_ST_UPDATES:-3}"
    export DEMO_SVCD_UPDATES="${DEMO_SVCD_UPDATES:-2}" DEMO_SVCD_DECODER_UPDATES="${DEMO_SVCD_DECODER_UPDATES:-2}"
    export DEMO_BATCH="${DEMO_BATCH:-8}" DEMO_BEAM="${DEMO_BEAM:-2}"
    PAPER_SUB_UPDATES="${PAPER_SUB_UPDATES:-2}"
    PAPER_RET_UPDATES="${PAPER_RET_UPDATES:-0 2}"
    PAPER_CURVE_UPDATES="${PAPER_CURVE_UPDATES:-2}"
    PAPER_BATCH="${PAPER_BATCH:-8}"
    PAPER_CALIB_SAMPLES="${PAPER_CALIB_SAMPLES:-4}"
    PAPER_INITS="${PAPER_INITS:-constraint calibrated}"
fi
apply_defaults
check_python
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OUT OMP_NUM_THREADS PYTHON
read -r -a RET_POINTS <<<"$PAPER_RET_UPDATES"
RET_MAX="${RET_POINTS[-1]}"
((PAPER_SUB_UPDATES <= RET_MAX)) || die "PAPER_SUB_UPDATES ($PAPER_SUB_UPDATES) exceeds the last retention point ($RET_MAX)"

LOGS="$OUT/logs"
STAMPS="$OUT/stamps"
export DATA_ROOT="$OUT/data"
export DATA="$DATA_ROOT/en-$TGT"
export TEXT_DATA="$DATA/binary"
RUNS="$OUT/runs/paper"
FP_CKPT_PATH="$OUT/runs/fp/checkpoint_avg.pt"
mkdir -p "$LOGS" "$STAMPS" "$RUNS"

if [[ ! -f "$STAMPS/fp.done" || ! -f "$FP_CKPT_PATH" ]]; then
    echo "== the demo's FP model is not in $OUT: running scripts/demo.sh first"
    "$SCRIPTS/demo.sh"
fi

SETTINGS="sub=$PAPER_SUB_UPDATES ret=$PAPER_RET_UPDATES curve=$PAPER_CURVE_UPDATES lr=$PAPER_LR"
SETTINGS+=" warmup=$PAPER_WARMUP beam=$PAPER_BEAM calib=$PAPER_CALIB_SAMPLES batch=$PAPER_BATCH seed=$PAPER_SEED"
SETTINGS+=" fp=$(stat -c %Y "$FP_CKPT_PATH")"
if [[ -f "$OUT/paper_settings.txt" && "$(cat "$OUT/paper_settings.txt")" != "$SETTINGS" && "$FRESH" == 0 ]]; then
    echo "note: the paper settings (or the FP model) differ from the previous run in $OUT; redoing every run"
    FRESH=1
fi
if [[ "$FRESH" == 1 ]]; then
    rm -rf "$STAMPS"/paper_*.done "$RUNS"
    mkdir -p "$RUNS"
fi
echo "$SETTINGS" >"$OUT/paper_settings.txt"

# ---------------------------------------------------------------------------------------------------------------
# One fine-tuning run per quantizer setting, named by the setting, so every table reading that setting shares it.
# It is checkpointed at the requested points (every gcd of them), each decoded into at_<k>/bleu.tst-COMMON.txt;
# at_0 is the swapped model before any update. A run with a "done" file is skipped.
# quant_run NAME TARGETS METHOD INIT ACT FP16(0/1) UPDATES "POINTS"
quant_run() {
    local name="$1" targets="$2" method="$3" init="$4" act="$5" fp16="$6" updates="$7" points="$8"
    local dir="$RUNS/$name" k ckpt extra=() save_every status=0
    if [[ -f "$dir/done" ]]; then
        echo "run $name: done earlier"
        return 0
    fi
    echo "run $name: $method on $targets (init ${init:-default}, act ${act:-default}, fp16 $fp16), $updates updates"
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '{"name": "%s", "targets": "%s", "method": "%s", "init": "%s", "act": "%s", "fp16": %s, "updates": %s}\n' \
        "$name" "$targets" "$method" "$init" "$act" "$fp16" "$updates" >"$dir/run.json"
    save_every="$(gcd_of "$updates" $points)"
    if [[ "$fp16" == 1 ]]; then extra+=(--fp16); fi
    if [[ "$method" == svcd ]]; then extra+=(--quant-calib-samples "$PAPER_CALIB_SAMPLES"); fi
    SEED="$PAPER_SEED" LOG_INTERVAL=1 PATIENCE=0 MAX_EPOCH=0 UPDATE_FREQ=1 NUM_WORKERS=0 \
        SAVE_DIR="$dir" FP_CKPT="$FP_CKPT_PATH" QUANT_TARGETS="$targets" QUANT_METHOD="$method" QUANT_INIT="$init" \
        QUANT_ACT="$act" LR="$PAPER_LR" WARMUP="$PAPER_WARMUP" MAX_UPDATE="$updates" BATCH_SIZE="$PAPER_BATCH" \
        MAX_TOKENS=2000000 EVAL_BLEU=0 SAVE_INTERVAL_UPDATES="$save_every" \
        "$SCRIPTS/train_svcd.sh" --no-epoch-checkpoints --keep-interval-updates -1 "${extra[@]}" 2>&1 \
        | tee "$dir/train.log" | { grep --line-buffered -o 'num_updates=[0-9]*' || true; } || status=$?
    if [[ "$status" != 0 ]]; then
        # fp16 runs may legitimately stop (minimum loss scale reached): that is a result, kept in train.log
        if [[ "$fp16" == 1 ]] && grep -q "FloatingPointError\|Minimum loss scale" "$dir/train.log"; then
            echo "run $name: stopped early in fp16 (see $dir/train.log)"
            touch "$dir/done"
            return 0
        fi
        tail -n 20 "$dir/train.log" >&2
        die "run $name failed; full log: $dir/train.log"
    fi
    for k in $points; do
        [[ "$k" == 0 ]] && continue
        ckpt="$(find "$dir" -maxdepth 1 -name "checkpoint_*_$k.pt" | head -n 1)"
        if [[ -z "$ckpt" && "$k" == "$updates" ]]; then ckpt="$dir/checkpoint_last.pt"; fi
        [[ -f "$ckpt" ]] || die "run $name: no checkpoint after $k updates in $dir"
        cp "$ckpt" "$dir/at_$k.pt"
    done
    if [[ " $points " == *" 0 "* ]]; then
        run_logged "$PYTHON" -m scripts.swapped_checkpoint --like "$dir/checkpoint_last.pt" --output "$dir/at_0.pt"
    fi
    for k in $points; do
        SAVE_DIR="$dir" CKPT="$dir/at_$k.pt" RESULTS_DIR="$dir/at_$k" BEAM="$PAPER_BEAM" "$SCRIPTS/generate.sh"
    done
    rm -f "$dir"/checkpoint*.pt "$dir"/at_*.pt # decoded: the tables read the BLEU files and train.log
    touch "$dir/done"
}

gcd_of() {
    local g=0 n a b
    for n in "$@"; do
        [[ "$n" == 0 ]] && continue
        a="$g" b="$n"
        while ((b)); do read -r a b <<<"$b $((a % b))"; done
        g="$a"
    done
    echo "$g"
}

do_fp_bleu() {
    SAVE_DIR="$OUT/runs/fp" CKPT="$FP_CKPT_PATH" RESULTS_DIR="$RUNS/fp/at_0" BEAM="$PAPER_BEAM" "$SCRIPTS/generate.sh"
}

do_retention() {
    local targets init
    for targets in decoder cross_attn; do
        for init in $PAPER_INITS; do
            quant_run "${targets}_${init}" "$targets" svcd "$init" per_token 0 "$RET_MAX" "$PAPER_RET_UPDATES"
        done
    done
}

do_submodules() {
    local part
    for part in q k v out; do
        quant_run "cross_attn.${part}_signvalue" "cross_attn.$part" svcd signvalue per_token 0 "$PAPER_SUB_UPDATES" \
            "$PAPER_SUB_UPDATES"
    done
    for part in cross_attn.q cross_attn.k cross_attn.v cross_attn.out cross_attn decoder; do
        quant_run "${part}_paper" "$part" svcd constraint seed 0 "$PAPER_SUB_UPDATES" "$PAPER_SUB_UPDATES"
    done
}

do_fp16() {
    local init
    for init in $PAPER_INITS; do
        quant_run "fp16_decoder_${init}" decoder svcd "$init" per_token 1 "$PAPER_CURVE_UPDATES" ""
    done
    quant_run fp16_decoder_paper decoder svcd constraint seed 1 "$PAPER_CURVE_UPDATES" ""
    quant_run fp16_decoder_bitnet decoder bitnet "" "" 1 "$PAPER_CURVE_UPDATES" ""
    quant_run fp16_decoder_bitnet158 decoder bitnet158 "" "" 1 "$PAPER_CURVE_UPDATES" ""
}

do_report() {
    run_logged "$PYTHON" -m scripts.paper_results --runs "$RUNS" --out-dir "$OUT" \
        --sub-updates "$PAPER_SUB_UPDATES" --ret-updates $PAPER_RET_UPDATES --inits $PAPER_INITS
}

STAGES=()
for s in $PAPER_STAGES; do STAGES+=("paper_$s"); done
T_START=$(date +%s.%N)
echo "cress_bitnet: the SVCD paper's analyses -> $OUT  (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
echo "settings: $SETTINGS"
for s in $PAPER_STAGES; do
    case "$s" in
        fp_bleu) stage paper_fp_bleu "decode tst-COMMON with the FP model (beam $PAPER_BEAM): the 100 % of every table" \
            do_fp_bleu ;;
        retention) stage paper_retention "SVCD on decoder and cross_attn, inits $PAPER_INITS, BLEU after $PAPER_RET_UPDATES updates" \
            do_retention ;;
        submodules) stage paper_submodules "cross-attention q, k, v, out: ours and the paper's setting ($PAPER_SUB_UPDATES updates)" \
            do_submodules ;;
        fp16) stage paper_fp16 "fp16 on CPU: every init, the paper's setting, BitNet b1 / b1.58 ($PAPER_CURVE_UPDATES updates)" \
            do_fp16 ;;
        report) stage paper_report "tables, figures and paper.md" do_report ;;
        *) die "PAPER_STAGES: unknown stage '$s' (fp_bleu retention submodules fp16 report)" ;;
    esac
done

if [[ -f "$OUT/paper.md" ]]; then
    echo
    echo "== $OUT/paper.md"
    cat "$OUT/paper.md"
fi
echo "this run took $(elapsed_since "$T_START") s"
