#!/usr/bin/env bash
# Stage runner shared by the CPU recipes (scripts/demo.sh, scripts/reproduce_paper.sh):
# numbered headings, a progress line every 20 s, one log per stage, stamps with the seconds taken, skip when stamped.
# Needs STAGES (array of stage names), LOGS and STAMPS (folders) set by the caller.

elapsed_since() {
    awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'
}

progress_of() {
    # the newest "num_updates=N" (training) or "H-" count (decoding) in a stage log
    local log="$1" n
    n="$(grep -o 'num_updates=[0-9]*' "$log" 2>/dev/null | tail -n 1 | cut -d= -f2 || true)"
    if [[ -n "$n" ]]; then
        echo "update $n"
        return
    fi
    n="$(grep -c '^H-' "$log" 2>/dev/null || true)"
    if [[ -n "$n" && "$n" != 0 ]]; then echo "$n sentences decoded"; fi
}

STAGE_NO=0
stage() {
    local name="$1" title="$2" func="$3"
    STAGE_NO=$((STAGE_NO + 1))
    local head="[$STAGE_NO/${#STAGES[@]}] $name"
    local stamp="$STAMPS/$name.done" log="$LOGS/$name.log"
    if [[ -f "$stamp" ]]; then
        echo "== $head: skip (done earlier in $(cat "$stamp") s; --fresh redoes it)"
        return 0
    fi
    echo "== $head: $title"
    local t0 pid waited=0 status=0
    t0=$(date +%s.%N)
    ("$func") >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        waited=$((waited + 1))
        if ((waited % 20 == 0)); then
            echo "   ... ${waited}s $(progress_of "$log")"
        fi
    done
    wait "$pid" || status=$?
    if [[ "$status" != 0 ]]; then
        echo "   --- last lines of $log ---" >&2
        tail -n 15 "$log" >&2
        echo "error: ${STAGE_WHAT:-stage} '$name' failed (exit $status); full log: $log" >&2
        exit 1
    fi
    local secs
    secs="$(elapsed_since "$t0")"
    echo "$secs" >"$stamp"
    echo "   done in ${secs} s (log: $log)"
}
