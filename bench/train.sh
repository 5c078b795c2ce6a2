#!/usr/bin/env bash
# Train-step throughput of trm-titans-mag + Muon × Grokfast: forge on flex and on libtorch CPU
# (ops/benches/train_step.rs) against the PyTorch implementation written for this benchmark
# (bench/trm_torch.py), eager and under torch.compile, on the same machine, with the same threads,
# batch and sequence length. Prints the CPU, one JSON line per measurement, and at the end each
# configuration's median tokens/s with its spread and its ratio to PyTorch eager and compiled;
# bench/RESULTS.md records them.
#
#   bash bench/train.sh            # THREADS=2, REPS=3 rounds (the rounds interleave the
#                                  # implementations); PRESETS="tiny 25m" by default
#
# Needs libtorch (.ci/install-libtorch) and the torch==2.9.0 venv (bench/torch-venv); it sets up
# both. torch.compile on CPU needs a C++ compiler (g++).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(.ci/install-libtorch)"
venv="$(bench/torch-venv)"
threads="${THREADS:-2}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores online, $threads threads"
echo "simd: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|amx_tile' | tr '\n' ' ')"
cargo bench -q -p forge-ops --features tch --bench train_step --no-run 2>/dev/null
forge() { cargo bench -q -p forge-ops --features tch --bench train_step -- "$@" 2>/dev/null; }
torch() { "$venv/bin/python" bench/trm_torch.py "$@" 2>/dev/null; }
for _ in $(seq "${REPS:-3}"); do
    for preset in ${PRESETS:-tiny 25m}; do
        case $preset in
            tiny) args=(--batch 8 --seq 128 --steps 10) ;;
            25m) args=(--batch 4 --seq 256 --steps 3) ;;
            *) echo "unknown preset $preset" >&2; exit 2 ;;
        esac
        args=(--preset "$preset" "${args[@]}" --threads "$threads")
        FORGE_CPU_BACKEND=flex forge "${args[@]}" | tee -a "$out"
        FORGE_CPU_BACKEND=libtorch forge "${args[@]}" | tee -a "$out"
        torch "${args[@]}" | tee -a "$out"
        # PyTorch again with the allocator settings forge applies in-process (ops/src/device.rs).
        MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 \
            torch "${args[@]}" | tee -a "$out"
        torch "${args[@]}" --compile | tee -a "$out"
    done
done
"$venv/bin/python" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def name(r):
    if r["impl"] == "pytorch" and r.get("malloc_mmap_threshold"):
        return "pytorch (allocator)"
    return r["impl"]
by = {}
for r in rows:
    by.setdefault((r["preset"], name(r)), []).append(r["tokens_per_second"])
print("\nmedian tokens/s (min–max, runs); ratios against PyTorch eager (the faster allocator "
      "setting) and torch.compile:")
for preset in dict.fromkeys(p for p, _ in by):
    med = {n: statistics.median(v) for (p, n), v in by.items() if p == preset}
    eager = max(med.get("pytorch", 0), med.get("pytorch (allocator)", 0))
    compiled = med.get("pytorch-compile")
    for (p, n), v in by.items():
        if p != preset:
            continue
        ratio = f"  {med[n] / eager:.2f}× eager" if eager else ""
        if compiled:
            ratio += f"  {med[n] / compiled:.2f}× compile"
        print(f"  {preset:5} {n:22} {med[n]:10.1f}  ({min(v):.1f}–{max(v):.1f}, {len(v)}){ratio}")
PY
