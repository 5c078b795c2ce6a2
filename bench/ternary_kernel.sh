#!/usr/bin/env bash
# The ternary × int8 kernel (ops/benches/ternary_kernel.rs) against f32 products of forge's own
# backend and of numpy (OpenBLAS), one after the other on the same machine and shapes, single-
# and multi-threaded. Prints one JSON line per measurement; bench/RESULTS.md records them.
#
#   bash bench/ternary_kernel.sh      # TOKENS=32 (the GEMM's tokens), THREADS="1 2"
#
# numpy comes from the benchmarks' venv (bench/torch-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(bench/torch-venv)"
tokens="${TOKENS:-32}"
grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx_vnni\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ' |
    sed 's/^/{"cpu_flags": "/; s/ $/"}\n/'
cargo bench -q -p forge-ops --bench ternary_kernel --no-run 2>/dev/null
for t in ${THREADS:-1 2}; do
    cargo bench -q -p forge-ops --bench ternary_kernel -- --threads "$t" --tokens "$tokens" 2>/dev/null
    OMP_NUM_THREADS="$t" OPENBLAS_NUM_THREADS="$t" "$venv/bin/python" bench/ternary_numpy.py "$t" "$tokens"
done
