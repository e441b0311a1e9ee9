#!/bin/sh
# haqa in a plain shell pipeline: tune, keep the answer, gate it against the last good run on
# this machine. Every figure compares only on the hardware it was measured on, so run this on the
# machine kind you deploy to, and keep HAQA_HOME and the store (haqa.duckdb) between runs.
#
#   docs/ci/haqa-pipeline.sh OUT_DIR [haqa run arguments...]
#   e.g. docs/ci/haqa-pipeline.sh out --model model/ --train tasks/train.jsonl \
#            --validation tasks/validation.jsonl --test tasks/test.jsonl --max-accuracy-drop 1
#
# Writes OUT_DIR/answer.json (docs/run-answer.schema.json) and OUT_DIR/junit.xml, and exits with
# haqa's code: 0 met, 2 bad input, 3 no configuration met the goal, 4 stopped (resumable),
# 5 the regression gate failed. HAQA_MAX_REGRESSION sets the gate (default decode=5%,accuracy=1pt).
set -u
out=${1:?usage: haqa-pipeline.sh OUT_DIR [haqa run arguments...]}
shift
mkdir -p "$out"
"${HAQA:-haqa}" run "$@" \
    --baseline latest --max-regression "${HAQA_MAX_REGRESSION:-decode=5%,accuracy=1pt}" \
    --json --output "$out/answer.json" --junit "$out/junit.xml" > "$out/stdout.json"
code=$?
case $code in
    0) echo "haqa: the goal is met and nothing regressed ($out/answer.json)" >&2 ;;
    3) echo "haqa: no configuration met the goal ($out/answer.json says why)" >&2 ;;
    4) echo "haqa: stopped before the end; resume the run id in $out/answer.json with" \
            "haqa run --resume RUN" >&2 ;;
    5) echo "haqa: worse than the baseline run ($out/junit.xml names the figure)" >&2 ;;
    *) echo "haqa: bad input or a crash (exit $code): fix the command" >&2 ;;
esac
exit $code
