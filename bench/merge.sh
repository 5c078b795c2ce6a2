#!/usr/bin/env bash
# Merge speed and memory: forge's streaming file merge vs mergekit (pip `mergekit`), linear,
# slerp and ties on the same generated ~25M-parameter Llama checkpoints, in one run.
#
#   bash bench/merge.sh            # REPS=3 by default
#
# Needs a venv with mergekit (created at $FORGE_BENCH_VENV, default ~/.cache/forge/torch-venv,
# shared with bench/train.sh; torch comes with mergekit, ~4 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FORGE_BENCH_VENV:-$HOME/.cache/forge/torch-venv}"
if [ ! -x "$venv/bin/mergekit-yaml" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.9.0 numpy mergekit==0.1.5
fi
cargo bench -q -p forge-ops --bench merge_files --no-run 2>/dev/null
bin=$(ls -t target/release/deps/merge_files-* | grep -v '\.d$' | head -1)
"$venv/bin/python" bench/merge_bench.py "$bin" "${WORK:-bench/work/merge}" "${REPS:-3}"
