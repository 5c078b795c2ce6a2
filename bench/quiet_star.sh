#!/usr/bin/env bash
# Quiet-STaR training-step throughput: forge on flex and on libtorch CPU
# (ops/benches/quiet_star_step.rs) against the PyTorch implementation of the same step written for
# this benchmark (bench/quiet_star_torch.py), on the same machine, threads, batch, sequence length
# and thought settings (2 thoughts of 12 tokens, 4 true tokens). Prints one JSON line per
# measurement; bench/RESULTS.md records them.
#
#   bash bench/quiet_star.sh        # THREADS=2 by default; REPS=2 repeats the whole round
#
# Needs libtorch (.ci/install-libtorch) and the torch==2.9.0 venv (bench/torch-venv); it sets up
# both.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(.ci/install-libtorch)"
venv="$(bench/torch-venv)"
threads="${THREADS:-2}"
cargo bench -q -p forge-ops --features tch --bench quiet_star_step --no-run 2>/dev/null
forge() { cargo bench -q -p forge-ops --features tch --bench quiet_star_step -- "$@" 2>/dev/null; }
for _ in $(seq "${REPS:-1}"); do
    for cfg in "tiny 4 64 3" "25m 1 8 1"; do
        read -r preset batch seq steps <<<"$cfg"
        args=(--preset "$preset" --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads")
        FORGE_CPU_BACKEND=flex forge "${args[@]}"
        FORGE_CPU_BACKEND=libtorch forge "${args[@]}"
        MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 \
            "$venv/bin/python" bench/quiet_star_torch.py "${args[@]}" 2>/dev/null
    done
done
