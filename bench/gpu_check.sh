#!/usr/bin/env bash
# One GPU check for issue 15 item 5, sized for under 8 minutes on one GPU; without a GPU it prints one line and
# exits 0. Steps (each logged under $OUT/logs, results gathered in $OUT/gpu_check.md):
#   1. pytest -m cuda                      the tests that need a CUDA device
#   2. fp16 fine-tuning through fairseq-train --fp16 on the toy corpus: SVCD (constraint) for $GPU_UPDATES
#      updates (default 200), plus SVCD unconstrained and BitNet b1 when GPU_FP16_RUNS says so (bench/fp16_runs.py)
#   3. bench/bench_layers.py               forward+backward of every quantizer in fp32/fp16/bf16 on CUDA
#   4. bench/bench_inference.py            packed-kernel inference benchmark (the packed kernel is CPU code)
#   5. bench/real_scale.py --quick --device cuda
# Usage: bench/gpu_check.sh [--dry-run] [--out DIR]
#   --dry-run   print every command and check that its python modules import (no GPU needed; nothing is run)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
OUT="${OUT:-$REPO/gpu_check_out}"
DRY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out)
            OUT="$2"
            shift
            ;;
        -h | --help)
            sed -n '2,11p' "$0"
            exit 0
            ;;
        *)
            echo "error: [gpu_check.sh] unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done
command -v "$PYTHON" >/dev/null 2>&1 || [[ -x "$PYTHON" ]] || {
    echo "error: [gpu_check.sh] python not found at '$PYTHON'; set PYTHON" >&2
    exit 2
}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
GPU_UPDATES="${GPU_UPDATES:-200}"
GPU_FP16_RUNS="${GPU_FP16_RUNS:-svcd:constraint,svcd:unconstrained,bitnet}"
WORK="$OUT/work"
RESULTS="$OUT/gpu_check.md"
USER_DIR="$REPO/cress_bitnet"
DATA="$WORK/data/en-de"

HAS_CUDA="$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [[ "$HAS_CUDA" != 1 && "$DRY" == 0 ]]; then
    echo "gpu_check: SKIPPED - no CUDA device visible to torch (nothing run, exit 0)"
    exit 0
fi

# ---- the commands ------------------------------------------------------------------------------------------------
CMD_TESTS=("$PYTHON" -m pytest -m cuda -q -p no:cacheprovider "$REPO/tests")
CMD_CORPUS=("$PYTHON" -m data_prep.make_toy_mustc --out "$WORK/mustc" --tgt-langs de --seed 1 --train 120 --dev 8
    --test 8)
CMD_PREP=("$PYTHON" -m data_prep.prep_mustc_data --data-root "$WORK/mustc" --tgt-lang de --out-dir "$DATA"
    --vocab-size 200)
CMD_TINY=("$PYTHON" -m data_prep.make_tiny_checkpoints --out "$WORK/ckpt" --dim 96 --ffn 192 --heads 4
    --conv-dim 40 --frontend filterbank --frame-pool 4)
CMD_FP=("$PYTHON" -m fairseq_cli.train "$DATA" --user-dir "$USER_DIR" --task speech_and_text_translation
    --config-yaml config.yaml --train-subset train --valid-subset dev --tgt-lang de --st-training
    --arch hubert_transformer --hubert-model-path "$WORK/ckpt/hubert_tiny_ls960.pt"
    --encoder-embed-dim 128 --encoder-ffn-embed-dim 256 --encoder-layers 3 --encoder-attention-heads 4
    --decoder-embed-dim 128 --decoder-ffn-embed-dim 256 --decoder-layers 3 --decoder-attention-heads 4
    --conv-channels 128 --conv-kernel-sizes 5 --layernorm-embedding
    --criterion speech_and_text_translation --label-smoothing 0.1 --optimizer adam --lr 2e-3
    --lr-scheduler inverse_sqrt --warmup-updates 30 --batch-size 16 --max-tokens 2000000 --max-update 300
    --disable-validation --no-epoch-checkpoints --save-dir "$WORK/fp" --num-workers 2 --no-progress-bar
    --log-interval 50 --seed 1 --fp16)
CMD_FP16=("$PYTHON" -m bench.fp16_runs --data "$DATA" --fp-checkpoint "$WORK/fp/checkpoint_last.pt"
    --out "$OUT/fp16_runs" --updates "$GPU_UPDATES" --runs "$GPU_FP16_RUNS" --device cuda --timeout 300)
CMD_LAYERS=("$PYTHON" -m bench.bench_layers --tokens 4096 --reps 5 --json "$OUT/bench_layers.json")
CMD_INFER=("$PYTHON" -m bench.bench_inference --reps 50 --json "$OUT/bench_inference.json")
CMD_REAL=("$PYTHON" -m bench.real_scale --quick --device cuda --out "$OUT/real_scale")

STEPS=(tests corpus prep tiny fp fp16 layers infer real)
declare -A CMDS=(
    [tests]="CMD_TESTS" [corpus]="CMD_CORPUS" [prep]="CMD_PREP" [tiny]="CMD_TINY" [fp]="CMD_FP"
    [fp16]="CMD_FP16" [layers]="CMD_LAYERS" [infer]="CMD_INFER" [real]="CMD_REAL"
)

if [[ "$DRY" == 1 ]]; then
    echo "gpu_check: dry run (CUDA visible: $HAS_CUDA); commands:"
    for step in "${STEPS[@]}"; do
        declare -n cmd="${CMDS[$step]}"
        printf '%s:' "$step"
        printf ' %q' "${cmd[@]}"
        echo
        unset -n cmd
    done
    # Every python entry point must import; the two bench runners must also answer --help.
    "$PYTHON" - "$REPO" <<'EOF'
import sys
repo = sys.argv[1]
sys.path.insert(0, repo)
import importlib
for mod in ("data_prep.make_toy_mustc", "data_prep.prep_mustc_data", "data_prep.make_tiny_checkpoints",
            "bench.fp16_runs", "bench.real_scale", "fairseq_cli.train", "cress_bitnet.export"):
    importlib.import_module(mod)
print("gpu_check: dry run ok - every module imports")
EOF
    "$PYTHON" -m bench.fp16_runs --help >/dev/null
    "$PYTHON" -m bench.real_scale --help >/dev/null
    exit 0
fi

mkdir -p "$OUT/logs" "$WORK"
T0=$(date +%s)
{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    "$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
    echo
    echo "| step | status | seconds | log |"
    echo "|---|---|---:|---|"
} >"$RESULTS"

FAILED=0
run_step() {
    local step="$1" t0 rc status=ok
    declare -n cmd="${CMDS[$step]}"
    t0=$(date +%s)
    echo "== $step"
    set +e
    "${cmd[@]}" >"$OUT/logs/$step.log" 2>&1
    rc=$?
    set -e
    if [[ "$step" == tests && "$rc" == 5 ]]; then
        status="no test selected" # pytest's exit code when nothing carries the cuda marker
    elif [[ "$rc" != 0 ]]; then
        status="FAILED (exit $rc)"
        FAILED=1
        tail -n 5 "$OUT/logs/$step.log" >&2
    fi
    echo "| $step | $status | $(($(date +%s) - t0)) | logs/$step.log |" >>"$RESULTS"
    unset -n cmd
}

for step in "${STEPS[@]}"; do
    run_step "$step"
done

{
    echo
    echo "total: $(($(date +%s) - T0)) s"
    for f in "$OUT/fp16_runs/fp16_runs.md" "$OUT/real_scale/real_scale.md"; do
        if [[ -f "$f" ]]; then
            echo
            cat "$f"
        fi
    done
} >>"$RESULTS"
echo "gpu_check: results in $RESULTS"
exit "$FAILED"
