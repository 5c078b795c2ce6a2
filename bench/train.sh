#!/usr/bin/env bash
# Train-step throughput of trm-titans-mag + Muon × Grokfast: forge on flex and on libtorch CPU
# (ops/benches/train_step.rs) against the PyTorch implementation written for this benchmark
# (bench/trm_torch.py), on the same machine, with the same threads, batch and sequence length.
# Prints one JSON line per measurement; bench/RESULTS.md records them.
#
#   bash bench/train.sh            # THREADS=2 by default; REPS=3 repeats the whole round
#
# Needs libtorch (.ci/install-libtorch) and the torch==2.9.0 venv (bench/torch-venv); it sets up
# both.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(.ci/install-libtorch)"
venv="$(bench/torch-venv)"
threads="${THREADS:-2}"
cargo bench -q -p forge-ops --features tch --bench train_step --no-run 2>/dev/null
forge() { cargo bench -q -p forge-ops --features tch --bench train_step -- "$@" 2>/dev/null; }
for _ in $(seq "${REPS:-1}"); do
    for cfg in "tiny 8 128 10" "25m 4 256 3"; do
        read -r preset batch seq steps <<<"$cfg"
        args=(--preset "$preset" --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads")
        FORGE_CPU_BACKEND=flex forge "${args[@]}"
        FORGE_CPU_BACKEND=libtorch forge "${args[@]}"
        "$venv/bin/python" bench/trm_torch.py "${args[@]}" 2>/dev/null
        # PyTorch again with the allocator settings forge applies in-process (ops/src/device.rs).
        MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 \
            "$venv/bin/python" bench/trm_torch.py "${args[@]}" 2>/dev/null
    done
done
