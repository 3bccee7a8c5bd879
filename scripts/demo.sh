#!/usr/bin/env bash
# CPU demo of the whole pipeline on a synthetic MuST-C-layout corpus (en->de): data, tiny HuBERT, MT pretraining,
# FP speech translation, two SVCD 1-bit fine-tunings, sacreBLEU on tst-COMMON, a results table and loss curves.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RECIPE_USAGE="[VAR=value ...] scripts/demo.sh [--fresh]"
RECIPE_ABOUT="Runs every stage with the recipes in scripts/ and writes, under \$OUT:
  results.md, results.json   BLEU, quantized modules, decoder linear size and training time of fp, svcd_cross_attn,
                             svcd_decoder
  curves.png                 train/valid loss of every training run (from their tensorboard logs)
  logs/<stage>.log           the full output of each stage;  stamps/<stage>.done  finished stages
A rerun skips finished stages; --fresh redoes them all. Changing any DEMO_* setting redoes everything.
On a 2-core CPU the default takes 10-13 minutes (FP ~69 BLEU, SVCD within 3 %)."
var OUT '$REPO/demo_out' "output folder"
var DEMO_TRAIN 3000 "train segments of the synthetic corpus"
var DEMO_DEV 200 "dev segments"
var DEMO_TEST 200 "tst-COMMON segments"
var DEMO_VOCAB 1000 "SentencePiece vocabulary size (the toy corpus caps it near 420)"
var DEMO_DIM 128 "text encoder/decoder embedding size"
var DEMO_FFN 256 "text encoder/decoder FFN size"
var DEMO_LAYERS 3 "text encoder/decoder layers"
var DEMO_HEADS 4 "text encoder/decoder attention heads"
var DEMO_HUBERT_DIM 96 "tiny HuBERT embedding size"
var DEMO_HUBERT_FFN 192 "tiny HuBERT FFN size"
var DEMO_HUBERT_LAYERS 2 "tiny HuBERT layers"
var DEMO_HUBERT_HEADS 4 "tiny HuBERT attention heads"
var DEMO_HUBERT_CONV 40 "tiny HuBERT mel bands (filterbank) or conv channels (random front end)"
var DEMO_HUBERT_FRONTEND filterbank "filterbank (conv front end initialised as a mel band spectrogram,
    transformer random) or random (Base's 7-layer conv stack, all random: learns acoustics from scratch, far slower)"
var DEMO_HUBERT_POOL 4 "filterbank: 10 ms frames per HuBERT frame (4: 25 Hz; 2: 50 Hz as HuBERT Base)"
var DEMO_SUBSAMPLER 5 "conv subsampler kernels after HuBERT, one stride-2 layer each (5: 25 Hz -> 12.5 Hz)"
var DEMO_FREEZE_HUBERT 0 "1 = keep the tiny HuBERT fixed during ST training"
var DEMO_MT_UPDATES 150 "MT pretraining updates"
var DEMO_MT_LR 3e-3 "MT pretraining learning rate"
var DEMO_ST_UPDATES 1600 "FP ST training updates"
var DEMO_ST_LR 2e-3 "FP ST learning rate (4e-3 sometimes never leaves the LM plateau)"
var DEMO_CTC 0.3 "weight of the auxiliary CTC loss on the speech encoder in FP training (0 = off)"
var DEMO_SVCD_UPDATES 100 "updates of the SVCD cross_attn fine-tuning"
var DEMO_SVCD_DECODER_UPDATES 200 "updates of the SVCD decoder fine-tuning (30 swapped layers need longer)"
var DEMO_SVCD_LR 5e-4 "SVCD learning rate"
var DEMO_SVCD_INIT signvalue "SVCD g/h init (constraint reproduces the paper's, see README)"
var DEMO_DROPOUT 0 "dropout of the text encoder/decoder in MT and FP training"
var DEMO_AVG 1 "checkpoints averaged for the SVCD start point and for decoding (1: the last one)"
var DEMO_BATCH 16 "ST batch size in utterances"
vars_lang_table
var DEMO_BEAM '$(lang_table_value 2)' "beam size for the test set (LANG_TABLE's beam for de)"
var DEMO_SEED 1 "corpus and training seed"
var OMP_NUM_THREADS 1 "torch CPU threads per process (on a shared 2-core machine two OpenMP threads are
    several times slower than one as soon as another process competes for the cores)"
vars_python

parse_switches fresh -- "$@"

export TGT=de
apply_defaults
check_python
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OMP_NUM_THREADS

LOGS="$OUT/logs"
STAMPS="$OUT/stamps"
MUSTC="$OUT/mustc"
export DATA_ROOT="$OUT/data"
export DATA="$DATA_ROOT/en-$TGT"
export TEXT_DATA="$DATA/binary"
HUBERT_DIR="$OUT/hubert"
export HUBERT="$HUBERT_DIR/hubert_tiny_ls960.pt"
RUNS="$OUT/runs"
export MT_CKPT="$RUNS/mt/checkpoint_avg.pt"
FP_CKPT_PATH="$RUNS/fp/checkpoint_avg.pt"
mkdir -p "$LOGS" "$STAMPS"

# Everything that changes what a stage produces: every DEMO_* setting; a different value redoes all stages.
SETTINGS=""
for name in "${VARS[@]}"; do
    if [[ "$name" == DEMO_* ]]; then SETTINGS+="${SETTINGS:+ }$name=${!name}"; fi
done
if [[ -f "$OUT/settings.txt" && "$(cat "$OUT/settings.txt")" != "$SETTINGS" && "$FRESH" == 0 ]]; then
    echo "note: the demo settings differ from the previous run in $OUT; redoing every stage"
    FRESH=1
fi
if [[ "$FRESH" == 1 ]]; then
    rm -f "$STAMPS"/*.done
fi
echo "$SETTINGS" >"$OUT/settings.txt"

MODEL_ARGS=(--encoder-embed-dim "$DEMO_DIM" --encoder-ffn-embed-dim "$DEMO_FFN" --encoder-layers "$DEMO_LAYERS"
    --encoder-attention-heads "$DEMO_HEADS" --decoder-embed-dim "$DEMO_DIM" --decoder-ffn-embed-dim "$DEMO_FFN"
    --decoder-layers "$DEMO_LAYERS" --decoder-attention-heads "$DEMO_HEADS" --conv-channels "$DEMO_DIM"
    --conv-kernel-sizes "$DEMO_SUBSAMPLER")

# The tiny HuBERT is not pretrained: let its conv front end learn at the full rate (pretraining used 0.1), all layers.
HUBERT_TRAIN_ARGS=(--hubert-feature-grad-mult 1.0 --hubert-layerdrop 0)

# ---------------------------------------------------------------------------------------------------------------
# Stage runner: headings, a progress line every 20 s while a stage runs, a log per stage, stamps with the time taken.
STAGES=(corpus hubert mt fp svcd_cross_attn svcd_decoder generate_fp generate_svcd_cross_attn
    generate_svcd_decoder results curves)
STAGE_WHAT="demo stage"  # the word in stage_runner.sh's failure message
T_START=$(date +%s.%N)
source "$(dirname "${BASH_SOURCE[0]}")/stage_runner.sh"

stage_seconds() {
    cat "$STAMPS/$1.done"
}

# ---------------------------------------------------------------------------------------------------------------
do_corpus() {
    rm -rf "$MUSTC" "$DATA_ROOT"
    run_logged "$PYTHON" -m data_prep.make_toy_mustc --out "$MUSTC" --tgt-langs "$TGT" --seed "$DEMO_SEED" \
        --train "$DEMO_TRAIN" --dev "$DEMO_DEV" --test "$DEMO_TEST"
    MUSTC_ROOT="$MUSTC" VOCAB_SIZE="$DEMO_VOCAB" "$REPO/scripts/prep_mustc.sh"
}

do_hubert() {
    local pool=2 # the random front end keeps Base's fixed 50 Hz layout
    if [[ "$DEMO_HUBERT_FRONTEND" == filterbank ]]; then pool="$DEMO_HUBERT_POOL"; fi
    rm -rf "$HUBERT_DIR"
    run_logged "$PYTHON" -m data_prep.make_tiny_checkpoints --out "$HUBERT_DIR" --seed "$DEMO_SEED" \
        --dim "$DEMO_HUBERT_DIM" --ffn "$DEMO_HUBERT_FFN" --layers "$DEMO_HUBERT_LAYERS" \
        --heads "$DEMO_HUBERT_HEADS" --conv-dim "$DEMO_HUBERT_CONV" --frontend "$DEMO_HUBERT_FRONTEND" \
        --frame-pool "$pool"
}

# Training settings shared by the demo's runs (CPU-sized versions of the CRESS recipe's values).
demo_train_env() {
    export SEED="$DEMO_SEED" LOG_INTERVAL=10 PATIENCE=0 MAX_EPOCH=0 UPDATE_FREQ=1 NUM_WORKERS=0
}

do_mt() {
    rm -rf "$RUNS/mt"
    demo_train_env
    SAVE_DIR="$RUNS/mt" LR="$DEMO_MT_LR" WARMUP=$((DEMO_MT_UPDATES / 3 + 1)) MAX_UPDATE="$DEMO_MT_UPDATES" \
        MAX_TOKENS_TEXT=4096 AVG_LAST=1 DROPOUT="$DEMO_DROPOUT" "$REPO/scripts/train_mt.sh" "${MODEL_ARGS[@]}"
}

do_fp() {
    rm -rf "$RUNS/fp"
    demo_train_env
    SAVE_DIR="$RUNS/fp" LR="$DEMO_ST_LR" WARMUP=$((DEMO_ST_UPDATES / 13 + 1)) MAX_UPDATE="$DEMO_ST_UPDATES" \
        BATCH_SIZE="$DEMO_BATCH" MAX_TOKENS=2000000 EVAL_BLEU=0 FREEZE_HUBERT="$DEMO_FREEZE_HUBERT" DROPOUT="$DEMO_DROPOUT" \
        "$REPO/scripts/train_st_baseline.sh" "${MODEL_ARGS[@]}" "${HUBERT_TRAIN_ARGS[@]}" --ctc-weight "$DEMO_CTC"
    run_logged "$PYTHON" -m scripts.average_checkpoints --inputs "$RUNS/fp" --num "$DEMO_AVG" \
        --output "$FP_CKPT_PATH"
}

svcd() {
    local targets="$1" updates="$2"
    rm -rf "$RUNS/svcd_$targets"
    demo_train_env
    SAVE_DIR="$RUNS/svcd_$targets" FP_CKPT="$FP_CKPT_PATH" QUANT_TARGETS="$targets" QUANT_METHOD=svcd \
        QUANT_INIT="$DEMO_SVCD_INIT" \
        LR="$DEMO_SVCD_LR" WARMUP=$((updates / 4 + 1)) MAX_UPDATE="$updates" MAX_EPOCH=0 \
        BATCH_SIZE="$DEMO_BATCH" MAX_TOKENS=2000000 EVAL_BLEU=0 "$REPO/scripts/train_svcd.sh"
}
do_svcd_cross_attn() { svcd cross_attn "$DEMO_SVCD_UPDATES"; }
do_svcd_decoder() { svcd decoder "$DEMO_SVCD_DECODER_UPDATES"; }

generate() {
    local run="$1"
    rm -f "$RUNS/$run/bleu.tst-COMMON.txt"
    SAVE_DIR="$RUNS/$run" AVG_LAST="$DEMO_AVG" BEAM="$DEMO_BEAM" "$REPO/scripts/generate.sh"
}
do_generate_fp() { generate fp; }
do_generate_svcd_cross_attn() { generate svcd_cross_attn; }
do_generate_svcd_decoder() { generate svcd_decoder; }

total_seconds() {
    local s total=0 name
    for name in "${STAGES[@]}"; do
        [[ "$name" == results || "$name" == curves ]] && continue
        s="$(stage_seconds "$name")"
        total="$(awk -v a="$total" -v b="$s" 'BEGIN{print a+b}')"
    done
    echo "$total"
}

do_results() {
    local args=() run secs
    for run in fp svcd_cross_attn svcd_decoder; do
        secs="$(stage_seconds "$run")"
        args+=(--system "$run" "$RUNS/$run/checkpoint_avg_last$DEMO_AVG.pt" "$RUNS/$run/bleu.tst-COMMON.txt" "$secs")
    done
    run_logged "$PYTHON" -m scripts.demo_results --data "$DATA" --total-seconds "$(total_seconds)" \
        --out-dir "$OUT" "${args[@]}"
}

do_curves() {
    run_logged "$PYTHON" -m scripts.plot_curves --out "$OUT/curves.png" \
        --title "demo en-de: loss per run (tensorboard logs)" --run "mt=$RUNS/mt/tensorboard" \
        --run "fp=$RUNS/fp/tensorboard" --run "svcd_cross_attn=$RUNS/svcd_cross_attn/tensorboard" \
        --run "svcd_decoder=$RUNS/svcd_decoder/tensorboard"
}

# ---------------------------------------------------------------------------------------------------------------
echo "cress_bitnet CPU demo -> $OUT  (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
echo "settings: $SETTINGS"
stage corpus "synthetic MuST-C en-de corpus ($DEMO_TRAIN/$DEMO_DEV/$DEMO_TEST segments), manifests, spm, MT binary" \
    do_corpus
stage hubert "tiny HuBERT checkpoint in the real release format ($DEMO_HUBERT_FRONTEND front end)" do_hubert
stage mt "MT pretraining on the corpus text ($DEMO_MT_UPDATES updates)" do_mt
stage fp "FP speech translation, hubert_transformer from HuBERT + MT ($DEMO_ST_UPDATES updates)" do_fp
stage svcd_cross_attn "SVCD 1-bit fine-tuning of the decoder cross-attention ($DEMO_SVCD_UPDATES updates)" \
    do_svcd_cross_attn
stage svcd_decoder "SVCD 1-bit fine-tuning of every decoder linear layer ($DEMO_SVCD_DECODER_UPDATES updates)" \
    do_svcd_decoder
stage generate_fp "decode tst-COMMON with the FP model, sacreBLEU" do_generate_fp
stage generate_svcd_cross_attn "decode tst-COMMON with svcd_cross_attn, sacreBLEU" do_generate_svcd_cross_attn
stage generate_svcd_decoder "decode tst-COMMON with svcd_decoder, sacreBLEU" do_generate_svcd_decoder
stage results "results table" do_results
stage curves "loss curves" do_curves

echo
echo "== results ($OUT/results.md)"
tail -n +3 "$OUT/results.md"
echo "curves: $OUT/curves.png"
echo "this run took $(elapsed_since "$T_START") s"
