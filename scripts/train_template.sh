# The fairseq-train invocation of the training recipes, written once (sourced, not run).
#
# A recipe is a short file (ESPnet's egs2/*/st1/run.sh -> TEMPLATE/st1/st.sh layout):
#   source "$(dirname "${BASH_SOURCE[0]}")/train_template.sh"
#   RECIPE_USAGE=...; RECIPE_ABOUT=...; RECIPE_TITLE=...   the --help text and the log line
#   var NAME DEFAULT HELP ...        its own settings, and any shared default it changes (e.g. MAX_EPOCH, CRITERION)
#   vars_st / vars_new_model         the optional setting groups below that it uses
#   recipe_args() { ... }            its checks, then its fairseq-train flags appended to RECIPE_ARGS
#                                    (st_args / new_model_args add the groups' flags)
#   after_training() { ... }         optional: run after fairseq-train (e.g. checkpoint averaging)
#   train_main "$@"
# A recipe with several fairseq-train stages calls `train_prepare "$@"` once, then `fairseq_train "$@" [more flags]`
# per stage after setting that stage's variables (SAVE_DIR and TB_DIR, CRITERION, ...; recipe_args runs each time).
# Extra command-line arguments go to fairseq-train last, so they override every default.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

vars_data
vars_text_data
vars_ckpt

# The hyper-parameters every training recipe passes (CRESS's ST values); a recipe that declared one keeps its own.
shared_training_vars() {
    shared SAVE_DIR "" "output folder"
    shared CRITERION speech_and_text_translation "training criterion"
    shared TB_DIR '$SAVE_DIR/tensorboard' "tensorboard log folder"
    shared LR 1e-4 "peak learning rate (inverse_sqrt schedule)"
    shared WARMUP 4000 "warm-up updates"
    shared CLIP_NORM 0.0 "gradient norm clipping (0 = off)"
    shared MAX_TOKENS 2000000 "audio samples per speech batch"
    shared BATCH_SIZE 32 "utterances per speech batch (empty: no limit)"
    shared MAX_TOKENS_TEXT 4096 "tokens per MT batch"
    shared UPDATE_FREQ 2 "batches per update"
    shared WEIGHT_DECAY 0.0001 "Adam weight decay"
    shared LABEL_SMOOTHING 0.1 "label smoothing of the cross-entropy"
    shared MAX_UPDATE 100000 "stop after this many updates"
    shared MAX_EPOCH 0 "stop after this many epochs (0 = no limit)"
    shared PATIENCE 10 "stop after this many validations without improvement"
    shared SEED 1 "random seed"
    shared NUM_WORKERS "" "data-loading workers (empty: $GPU_WORKERS beside a GPU, 0 on CPU)"
    shared LOG_INTERVAL 100 "updates between log lines"
    shared SAVE_INTERVAL_UPDATES 0 "also save every N updates (0 = epoch checkpoints only)"
    vars_fp16
    vars_python
}

# vars_st: speech translation training (--st-training) with the MT loss on the transcripts, external MT batches and
# validation BLEU (train_st_baseline.sh, train_svcd.sh).
vars_st() {
    var MT_FINETUNE 1 "1 = --mt-finetune (MT loss on each batch's transcripts)"
    var EXT_MT 0 "1 = --ext-mt-training (also external MT batches from TEXT_DATA)"
    var EVAL_BLEU 1 "1 = validation BLEU, best checkpoint by BLEU"
    var EVAL_BEAM 8 "beam of the validation BLEU"
}
st_args() {
    RECIPE_ARGS+=(--st-training)
    if [[ "$MT_FINETUNE" == 1 ]]; then RECIPE_ARGS+=(--mt-finetune); fi
    if [[ "$EXT_MT" == 1 || -d "$TEXT_DATA" ]]; then RECIPE_ARGS+=(--text-data "$TEXT_DATA"); fi
    if [[ "$EXT_MT" == 1 ]]; then
        require_dir "$TEXT_DATA" "binarized MT text (TEXT_DATA) for EXT_MT=1"
        RECIPE_ARGS+=(--ext-mt-training)
    fi
    if [[ "$EVAL_BLEU" == 1 ]]; then
        RECIPE_ARGS+=(--eval-bleu --eval-bleu-args "{\"beam\": $EVAL_BEAM}" --eval-bleu-print-samples
            --best-checkpoint-metric bleu --maximize-best-checkpoint-metric)
    fi
}

# vars_new_model: a hubert_transformer built from a HuBERT checkpoint (train_mt.sh, train_st_baseline.sh). The
# DeltaLM mode (DELTALM_DIR set) builds DeltaLM-base's text encoder/decoder.
vars_new_model() {
    var DELTALM_DIR "" "DeltaLM mode: folder of the DeltaLM release (deltalm-base.pt, spm.model, dict.txt)"
    var HUBERT '$CKPT_ROOT/hubert_base_ls960.pt' "HuBERT checkpoint"
    var ARCH hubert_transformer_postln \
        "architecture (CRESS's; hubert_transformer = pre-LN; must match the MT model)" hubert_deltalm_base
    var DROPOUT "" "dropout of the text encoder/decoder (empty: the architecture's, 0.1)"
}
new_model_args() {
    require_file "$HUBERT" "HuBERT checkpoint (HUBERT)"
    RECIPE_ARGS+=(--arch "$ARCH" --layernorm-embedding --hubert-model-path "$HUBERT")
    if [[ -n "$DROPOUT" ]]; then RECIPE_ARGS+=(--dropout "$DROPOUT"); fi
}

# train_prepare "$@": --help, TGT, every default, the data folder; once per recipe.
train_prepare() {
    shared_training_vars
    recipe_start "$@"
    require_dir "$DATA" "prepared data (DATA; run scripts/prep_mustc.sh)"
}

# fairseq_train [ARGS...]: one fairseq-train run with the current settings and recipe_args' flags, ARGS last.
fairseq_train() {
    RECIPE_ARGS=()
    recipe_args
    local device_flags=() batch=()
    device_args device_flags
    if [[ -n "$BATCH_SIZE" ]]; then batch=(--batch-size "$BATCH_SIZE"); fi
    if [[ "$SAVE_INTERVAL_UPDATES" != 0 ]]; then RECIPE_ARGS+=(--save-interval-updates "$SAVE_INTERVAL_UPDATES"); fi

    mkdir -p "$SAVE_DIR"
    log "$RECIPE_TITLE en-$TGT -> $SAVE_DIR"
    run_logged "$PYTHON" -m fairseq_cli.train "$DATA" \
        --user-dir "$USER_DIR" --task speech_and_text_translation --config-yaml config.yaml \
        --train-subset train --valid-subset dev --tgt-lang "$TGT" "${RECIPE_ARGS[@]}" \
        --criterion "$CRITERION" --label-smoothing "$LABEL_SMOOTHING" --report-accuracy \
        --optimizer adam --adam-betas '(0.9, 0.98)' --lr "$LR" --lr-scheduler inverse_sqrt \
        --warmup-updates "$WARMUP" --weight-decay "$WEIGHT_DECAY" --clip-norm "$CLIP_NORM" \
        --max-tokens "$MAX_TOKENS" "${batch[@]}" --max-tokens-text "$MAX_TOKENS_TEXT" --update-freq "$UPDATE_FREQ" \
        --max-update "$MAX_UPDATE" --max-epoch "$MAX_EPOCH" --patience "$PATIENCE" \
        --save-dir "$SAVE_DIR" --tensorboard-logdir "$TB_DIR" \
        --seed "$SEED" --num-workers "$NUM_WORKERS" --no-progress-bar --log-format simple \
        --log-interval "$LOG_INTERVAL" --ddp-backend legacy_ddp "${device_flags[@]}" "$@"
}

train_main() {
    train_prepare "$@"
    fairseq_train "$@"
    if declare -F after_training >/dev/null; then after_training; fi
    log "done: $SAVE_DIR"
}
