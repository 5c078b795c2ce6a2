#!/usr/bin/env bash
# `forge dag` on a 1,000-step pipeline and `forge metrics` over a store with 1,000 runs (issue 14's
# goals: < 100 ms and < 200 ms), beside `dvc dag` on the same graph and `dvc exp show` /
# `dvc metrics diff` over 1,000 commits of the same metrics. Wall time and peak RSS of each
# command, 3 runs each, release build. bench/RESULTS.md records the numbers. dvc 3.67.1 goes to
# bench/work/venv (as for bench/run.sh).
#
#   bash bench/cli.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
forge="$PWD/target/release/forge"
dvc="$PWD/bench/work/venv/bin/dvc"
if [ ! -x "$dvc" ]; then
    python3 -m venv bench/work/venv
    bench/work/venv/bin/pip install --quiet "dvc==3.67.1"
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cd "$dir"
# 100 chains of 10 exec steps, each step reading the one before it.
python3 - <<'PY'
lines = ["version: 1", "name: big", "phases:", "  p:", "    steps:"]
for c in range(100):
    for i in range(10):
        up = "" if i == 0 else f"inputs: {{ up: c{c}s{i-1} }}, "
        lines.append(f'      c{c}s{i}: {{ op: exec, {up}with: {{ run: "echo {c} > $FORGE_OUTPUT/x" }} }}')
open("big.yaml", "w").write("\n".join(lines) + "\n")
PY
cat > m.yaml <<'YAML'
version: 1
name: m
phases:
  p:
    steps:
      data:
        op: download
        matrix: { n: [50, 80, 120] }
        with: { source: "builtin:mixed", samples: "${matrix.n}" }
YAML
for _ in $(seq 1000); do "$forge" apply m.yaml >/dev/null 2>&1; done
runs=(.forge/runs/*)
first="$(basename "${runs[0]}")" last="$(basename "${runs[-1]}")"
time_it() {
    local label=$1; shift
    for _ in 1 2 3; do
        /usr/bin/time -f "{\"bench\": \"$label\", \"s\": %e, \"peak_rss_kb\": %M}" "$@" >/dev/null
    done
}
time_it "dag text, 1000 steps" "$forge" dag big.yaml
time_it "dag dot, 1000 steps" "$forge" dag big.yaml -f dot
time_it "metrics latest (3 instances)" "$forge" metrics m.yaml
time_it "metrics --runs 1000 (9000 cells, json)" "$forge" metrics m.yaml --runs 1000 -f json
time_it "metrics diff (first vs last run)" "$forge" metrics diff "$first" "$last"

# The same graph for dvc: 100 chains of 10 stages, each reading the one before it.
mkdir dvcbig && (
    cd dvcbig
    git init -q . && "$dvc" init -q && "$dvc" config core.analytics false
    python3 - <<'PY'
lines = ["stages:"]
for c in range(100):
    for i in range(10):
        lines += [f"  c{c}s{i}:", f"    cmd: echo {c} > o{c}_{i}", f"    outs: [o{c}_{i}]"]
        if i:
            lines.append(f"    deps: [o{c}_{i-1}]")
open("dvc.yaml", "w").write("\n".join(lines) + "\n")
PY
    time_it "dvc dag, 1000 stages" "$dvc" dag
    time_it "dvc dag --dot, 1000 stages" "$dvc" dag --dot
)
# The same metrics for dvc: 1,000 commits, each recording the 3 instances' numbers that one
# forge run of m.yaml records (3 × 3 cells, as in the forge store above).
mkdir dvcm && (
    cd dvcm
    git init -q . && "$dvc" init -q && "$dvc" config core.analytics false
    git config user.email bench@example.invalid && git config user.name bench
    printf 'stages:\n  data:\n    cmd: "true"\n    metrics:\n      - metrics.json:\n          cache: false\n' > dvc.yaml
    for r in $(seq 1000); do
        printf '{"n50": {"records": 50, "train": %d, "val": 2}, "n80": {"records": 80, "train": %d, "val": 4}, "n120": {"records": 120, "train": %d, "val": 6}}\n' \
            $((40 + r % 5)) $((70 + r % 7)) $((110 + r % 3)) > metrics.json
        git add -A >/dev/null && git commit -qm "run $r"
    done
    time_it "dvc exp show (workspace + HEAD)" "$dvc" exp show --json
    time_it "dvc exp show -n 1000 (1000 commits, json)" "$dvc" exp show -n 1000 --json
    time_it "dvc metrics diff (first vs last commit)" "$dvc" metrics diff HEAD~999 HEAD --json
)
