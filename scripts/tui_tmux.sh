#!/usr/bin/env bash
# Drive `haqa tui` in tmux at 80x24 and 200x50: send keys, capture each pane as text, so a person
# can read what a user sees (are the panes readable? does anything overlap?).
#
#   scripts/tui_tmux.sh [OUT_DIR]          demo store (fixed trace): home, replay, tabs, help, form
#   LIVE=1 scripts/tui_tmux.sh [OUT_DIR]   also start a real quick expert run on zoo:tiny from the
#                                          form and capture it while it runs, then stop it (uses
#                                          the tiny zoo model in $HAQA_HOME, built there first if
#                                          missing; takes a few minutes). LIVE=only: just that.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d -t haqa-tui-XXXX)}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
HAQA=${HAQA:-.venv/bin/haqa}
command -v tmux >/dev/null || { echo "tmux is not installed (apt-get install -y tmux)"; exit 1; }

DB="$OUT/demo.duckdb"
rm -f "$DB"
"$PY" -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; \
from support.demo_store import fill_store; fill_store(Path('$DB'))"
# tmux starts commands with its server's environment, not ours: pass HAQA_HOME on.
ENV="env HAQA_HOME='${HAQA_HOME:-}'"
[[ -n "${HAQA_HOME:-}" ]] || ENV=""

capture() {  # session name
    tmux capture-pane -p -t "$1" > "$OUT/$1-$2.txt"
    echo "== $1-$2"
}

keys() {  # session, keys...: one at a time (a burst of keys can arrive out of step), then
          # wait for the screen to settle
    local s=$1; shift
    for k in "$@"; do tmux send-keys -t "$s" "$k"; sleep 0.3; done
    sleep "${WAIT:-1}"
}

sizes="80x24 200x50"
[[ "${LIVE:-0}" == only ]] && sizes=""
for size in $sizes; do
    s="tui-$size"
    tmux kill-session -t "$s" 2>/dev/null || true
    tmux new-session -d -s "$s" -x "${size%x*}" -y "${size#*x}" \
        "$ENV $HAQA tui --db '$DB'; sleep 600"
    sleep 4
    capture "$s" 01-home
    keys "$s" Down Enter;            capture "$s" 02-replay-end
    keys "$s" Home;                  capture "$s" 03-replay-start
    keys "$s" $(printf 'Right %.0s' $(seq 12)); capture "$s" 04-replay-step12
    keys "$s" n n;                   capture "$s" 05-replay-next-trials
    keys "$s" t;                     capture "$s" 06-replay-pareto
    keys "$s" End;                   capture "$s" 07-replay-pareto-end
    keys "$s" t;                     capture "$s" 08-replay-brief
    keys "$s" '?';                   capture "$s" 09-help
    keys "$s" Escape Escape;         capture "$s" 10-home-again
    WAIT=4 keys "$s" n;              capture "$s" 11-new-run-form
    # the model field has the focus: make it a zoo model that does not exist, and the goal bad
    keys "$s" x Tab f a s t e s t C-s; capture "$s" 12-form-errors
    keys "$s" Escape q
    tmux kill-session -t "$s" 2>/dev/null || true
done

if [[ "${LIVE:-0}" != 0 ]]; then
    s=tui-live
    LDB="$OUT/live.duckdb"
    rm -f "$LDB"
    tmux kill-session -t "$s" 2>/dev/null || true
    tmux new-session -d -s "$s" -x 80 -y 24 "$ENV $HAQA tui --db '$LDB'; sleep 600"
    sleep 4
    WAIT=4 keys "$s" n
    # quick settings on, small budgets, then start
    keys "$s" Tab Tab Tab Tab 1 Tab 1 Tab Tab Space; capture "$s" 01-form
    keys "$s" C-s
    for i in 1 2 3; do sleep 10; capture "$s" "0$((i + 1))-running"; done
    keys "$s" q;                     capture "$s" 05-quit-dialog
    keys "$s" Escape;                capture "$s" 06-still-running
    sleep 90;                        capture "$s" 07-finished
    keys "$s" t;                     capture "$s" 08-pareto
    keys "$s" Escape;                capture "$s" 09-home
    keys "$s" q
    tmux kill-session -t "$s" 2>/dev/null || true
fi
echo "captures in $OUT"
