# Shared helpers for the recipes in scripts/ (sourced, not run).
#
# Sets REPO (the checkout, found from this file's location), PYTHONPATH (REPO first, so `python -m scripts.x` and
# `python -m data_prep.x` run the checkout's tools and cress_bitnet), USER_DIR, LANGS; provides
#   var NAME DEFAULT HELP [DELTALM_DEFAULT]   declare a setting: its default lives here only (ESPnet's st.sh style)
#   usage                   print RECIPE_USAGE, RECIPE_ABOUT and the declared settings with their defaults
#   apply_defaults          give every unset declared setting its default (expanded in declaration order)
#   die MSG                 print "error: MSG" and exit 2
#   log MSG                 print "[script] MSG" to stderr
#   want_help "$@"          true when the first argument is -h/--help
#   check_tgt               validate $TGT against the 8 MuST-C target languages
#   device_args ARRAY_NAME  fill ARRAY_NAME with --fp16 (GPU) or --cpu (no GPU; fp16 dropped with a message)
#   run_logged CMD...       echo the command, then run it
# shellcheck shell=bash
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USER_DIR="${USER_DIR:-$REPO/cress_bitnet}"
case ":${PYTHONPATH:-}:" in
    *":$REPO:"*) ;;
    *) export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" ;;
esac
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
        if [[ "$FP16" == "1" ]]; then
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
    if [[ -z "${NUM_WORKERS:-}" ]]; then
        if [[ "$DEVICE" == gpu ]]; then NUM_WORKERS="$GPU_WORKERS"; else NUM_WORKERS=0; fi
    fi
}

run_logged() {
    echo "+ $*" >&2
    "$@"
}

# lang_table_value COLUMN: beam (2) or lenpen (3) of $TGT in configs/lang_table.tsv
lang_table_value() {
    local table="$LANG_TABLE"
    [[ -f "$table" ]] || die "language table not found: $table (set LANG_TABLE)"
    local v
    v="$(awk -F'\t' -v l="$TGT" -v c="$1" '$1==l{print $c}' "$table")"
    [[ -n "$v" ]] || die "$table has no row for TGT=$TGT"
    echo "$v"
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

# ---------------------------------------------------------------------------------------------------------------
# Settings: every recipe declares its environment variables with `var`; --help prints them from the same table the
# code reads its defaults from (ESPnet's egs2/TEMPLATE/st1/st.sh generates its help from its defaults the same way).
VARS=()
declare -A VAR_DEFAULT=() VAR_HELP=() VAR_DELTALM=()
GPU_WORKERS=4 # data-loading workers beside a GPU; none on CPU (they would compete with training for the cores)

# var NAME DEFAULT HELP [DELTALM_DEFAULT]: declare a setting. DEFAULT is expanded when applied, in declaration
# order, so it may name settings declared before it ('$DATA_ROOT/en-$TGT'); empty means "not passed". With
# DELTALM_DIR set (the DeltaLM mode), DELTALM_DEFAULT replaces DEFAULT. Declaring a name again replaces it in place.
var() {
    [[ -v "VAR_HELP[$1]" ]] || VARS+=("$1")
    VAR_DEFAULT[$1]="$2"
    VAR_HELP[$1]="$3"
    VAR_DELTALM[$1]="${4:-}"
}

# shared NAME DEFAULT HELP [DELTALM_DEFAULT]: declare a setting unless the recipe declared it first (its default wins).
shared() {
    [[ -v "VAR_HELP[$1]" ]] || var "$@"
}

usage() {
    printf 'Usage: %s\n\n%s\n\nEnvironment (default):\n' "$RECIPE_USAGE" "$RECIPE_ABOUT"
    local name text width=0 first part
    for name in "${VARS[@]}"; do ((${#name} > width)) && width=${#name}; done
    for name in "${VARS[@]}"; do
        text="${VAR_HELP[$name]}"
        [[ -n "${VAR_DEFAULT[$name]}" ]] && text+=" (${VAR_DEFAULT[$name]})"
        [[ -n "${VAR_DELTALM[$name]}" ]] && text+=" [DeltaLM mode: ${VAR_DELTALM[$name]}]"
        first="$name"
        while IFS= read -r part; do # a multi-line help continues under its first line
            printf '  %-*s  %s\n' "$width" "$first" "${part#"${part%%[![:space:]]*}"}"
            first=""
        done <<<"$text"
    done
}

# apply_defaults: every declared setting that is unset or empty gets its (expanded) default.
apply_defaults() {
    local name value
    for name in "${VARS[@]}"; do
        [[ -n "${!name:-}" ]] && continue
        value="${VAR_DEFAULT[$name]}"
        [[ -n "${DELTALM_DIR:-}" && -n "${VAR_DELTALM[$name]}" ]] && value="${VAR_DELTALM[$name]}"
        eval "value=\"$value\""
        printf -v "$name" '%s' "$value"
    done
}

# parse_switches NAME... -- ARGS...: the CPU recipes' command line: -h/--help prints the settings table and exits;
# --NAME sets the variable NAME (upper case, dashes as underscores) to 1 (each starts at 0); anything else is an error.
parse_switches() {
    local names=() name arg known
    while [[ "$1" != "--" ]]; do
        names+=("$1")
        shift
    done
    shift
    for name in "${names[@]}"; do printf -v "${name^^}" '%s' 0; done
    for arg in "$@"; do
        if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
            usage
            exit 0
        fi
        known=0
        for name in "${names[@]}"; do
            if [[ "$arg" == "--$name" ]]; then
                printf -v "${name^^}" '%s' 1
                known=1
            fi
        done
        [[ "$known" == 1 ]] || die "unknown argument '$arg' (see --help)"
    done
}

# The settings most recipes share, declared in one place each.
vars_data() {
    var TGT "" "target language: $LANGS (required)"
    var DATA_ROOT '$REPO/data' "prepared data root"
    var DATA '$DATA_ROOT/en-$TGT' "prepared ST data of the pair (manifests, spm, config.yaml)"
}
vars_text_data() {
    var TEXT_DATA '$DATA/binary' "binarized MT text (--text-data)"
}
vars_ckpt() {
    var CKPT_ROOT '$REPO/checkpoints' "checkpoint root"
    var MT_DIR '$CKPT_ROOT/en-$TGT.mt' "run folder of the MT pretraining (train_mt.sh)"
    var ST_DIR '$CKPT_ROOT/en-$TGT.st_baseline' "run folder of the FP ST baseline (train_st_baseline.sh)"
}
vars_lang_table() {
    var LANG_TABLE '$REPO/configs/lang_table.tsv' "beam and length penalty per target language"
}
vars_fp16() {
    shared FP16 1 "1 = --fp16 when a GPU is present (ignored on CPU); 0 = fp32"
}
vars_python() {
    shared PYTHON '$REPO/.venv/bin/python' "interpreter with fairseq + cress_bitnet"
}

# Every recipe starts the same way: --help (generated from the declared settings), then TGT, the defaults, the
# interpreter. Nothing is written before TGT is valid.
recipe_start() {
    if want_help "$@"; then
        usage
        exit 0
    fi
    check_tgt
    apply_defaults
    check_python
}
