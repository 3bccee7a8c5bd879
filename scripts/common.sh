# Shared helpers for the recipes in scripts/ (sourced, not run).
#
# Sets REPO (the checkout, found from this file's location), PYTHON, USER_DIR, LANGS; provides
#   die MSG                 print "error: MSG" and exit 2
#   log MSG                 print "[script] MSG" to stderr
#   want_help "$@"          true when the first argument is -h/--help
#   check_tgt               validate $TGT against the 8 MuST-C target languages
#   device_args ARRAY_NAME  fill ARRAY_NAME with --fp16 (GPU) or --cpu (no GPU; fp16 dropped with a message)
#   run_logged CMD...       echo the command, then run it
# shellcheck shell=bash

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
USER_DIR="${USER_DIR:-$REPO/cress_bitnet}"
LANGS="de es fr it nl pt ro ru"
SCRIPT_NAME="$(basename "$0")"
export PYTHONUNBUFFERED=1

die() {
    echo "error: [$SCRIPT_NAME] $*" >&2
    exit 2
}

log() {
    echo "[$SCRIPT_NAME] $*" >&2
}

want_help() {
    [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]
}

check_tgt() {
    [[ -n "${TGT:-}" ]] || die "TGT is not set; set TGT to one of: $LANGS (e.g. TGT=de)"
    local l
    for l in $LANGS; do
        [[ "$TGT" == "$l" ]] && return 0
    done
    die "TGT='$TGT' is not a MuST-C target language; use one of: $LANGS"
}

check_python() {
    [[ -x "$PYTHON" ]] || command -v "$PYTHON" >/dev/null 2>&1 \
        || die "python not found at '$PYTHON'; set PYTHON to the interpreter that has fairseq and cress_bitnet"
}

# device_args NAME: NAME=(--fp16 ...) on a GPU, NAME=(--cpu) otherwise (FP16=0 turns fp16 off on a GPU too);
# also sets DEVICE and the default NUM_WORKERS.
device_args() {
    local -n _out="$1"
    local cuda
    cuda="$("$PYTHON" -c 'import torch;print(torch.cuda.is_available())' 2>/dev/null || echo False)"
    if [[ "$cuda" == "True" ]]; then
        if [[ "${FP16:-1}" == "1" ]]; then
            _out=(--fp16)
        else
            _out=()
            log "FP16=0: training in fp32 on the GPU"
        fi
        DEVICE=gpu
    else
        _out=(--cpu)
        log "no GPU found: running on CPU in fp32 (--fp16 dropped)"
        DEVICE=cpu
    fi
    # data-loading workers: 4 beside a GPU, none on CPU (they would compete with training for the cores)
    if [[ "$DEVICE" == gpu ]]; then NUM_WORKERS="${NUM_WORKERS:-4}"; else NUM_WORKERS="${NUM_WORKERS:-0}"; fi
}

run_logged() {
    echo "+ $*" >&2
    "$@"
}

# lang_table_value COLUMN: beam (2) or lenpen (3) of $TGT in configs/lang_table.tsv
lang_table_value() {
    local table="${LANG_TABLE:-$REPO/configs/lang_table.tsv}"
    [[ -f "$table" ]] || die "language table not found: $table (set LANG_TABLE)"
    local v
    v="$(awk -F'\t' -v l="$TGT" -v c="$1" '$1==l{print $c}' "$table")"
    [[ -n "$v" ]] || die "$table has no row for TGT=$TGT"
    echo "$v"
}

# default_paths: the layout every recipe shares (each variable can be set instead).
#   DATA_ROOT/en-$TGT          prepared ST data (manifests, spm, config.yaml)      = DATA
#   DATA/binary                binarized MT text (--text-data)                     = TEXT_DATA
#   CKPT_ROOT/hubert_base_ls960.pt                                                  = HUBERT
#   CKPT_ROOT/en-$TGT.mt, .st_baseline, .svcd_<targets>                            = MT_DIR, ST_DIR, SVCD_DIR
default_paths() {
    DATA_ROOT="${DATA_ROOT:-$REPO/data}"
    DATA="${DATA:-$DATA_ROOT/en-$TGT}"
    TEXT_DATA="${TEXT_DATA:-$DATA/binary}"
    CKPT_ROOT="${CKPT_ROOT:-$REPO/checkpoints}"
    HUBERT="${HUBERT:-$CKPT_ROOT/hubert_base_ls960.pt}"
    MT_DIR="${MT_DIR:-$CKPT_ROOT/en-$TGT.mt}"
    ST_DIR="${ST_DIR:-$CKPT_ROOT/en-$TGT.st_baseline}"
}

require_dir() {
    [[ -d "$1" ]] || die "$2 not found: $1"
}

require_file() {
    [[ -f "$1" ]] || die "$2 not found: $1"
}

# on_off NAME VALUE: prints NAME when VALUE is 1 (for store_true flags controlled by env).
on_off() {
    [[ "$2" == "1" ]] && echo "$1"
    return 0
}

# Every recipe starts the same way: --help (the script's own usage), then TGT, the interpreter and the default paths.
recipe_start() {
    if want_help "$@"; then
        usage
        exit 0
    fi
    check_tgt
    check_python
    default_paths
}
