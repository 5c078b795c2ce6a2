#!/usr/bin/env bash
# `forge dag` on a 1,000-step pipeline and `forge metrics` over a store with 1,000 runs (issue 14's
# goals: < 100 ms and < 200 ms). Wall time and peak RSS of each command, 3 runs each, release
# build. bench/RESULTS.md records the numbers.
#
#   bash bench/cli.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
forge="$PWD/target/release/forge"
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
