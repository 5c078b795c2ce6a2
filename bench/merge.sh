#!/usr/bin/env bash
# Merge speed and memory: forge's streaming file merge vs mergekit (pip `mergekit`), linear,
# slerp and ties on the same generated Llama checkpoints, in one run, beside the machine's I/O
# floor (reading the inputs, writing and syncing the output) and the whole `forge apply` step.
#
#   bash bench/merge.sh                          # 25.5M parameters (~98 MiB per file), REPS=3
#   FORGE_MERGE_SIZE=438m REPS=1 bash bench/merge.sh   # 438M (1.6 GiB per file; ~15 GiB of disk)
#   FORGE_MERGE_SIZE=1b REPS=1 bash bench/merge.sh     # 1.0B (3.6 GiB per file; ~33 GiB of disk)
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
cargo build -q --release
cargo bench -q -p forge-ops --bench merge_files --no-run 2>/dev/null
bin=$(ls -t target/release/deps/merge_files-* | grep -v '\.d$' | head -1)
size="${FORGE_MERGE_SIZE:-25m}"
FORGE_BIN="$PWD/target/release/forge" "$venv/bin/python" bench/merge_bench.py "$bin" \
    "${WORK:-bench/work/merge-$size}" "${REPS:-3}"
