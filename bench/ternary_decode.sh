#!/usr/bin/env bash
# End-to-end decoding of a ternary (BitNet b1.58, packed kernel) model against the same model in
# f32 (ops/benches/ternary_decode.rs): ms per token and peak resident memory, each in its own
# process, one after the other on the same machine. Prints one JSON line per measurement;
# bench/RESULTS.md records them.
#
#   bash bench/ternary_decode.sh      # PRESETS="tiny 25m", THREADS="1 2", TOKENS=32
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx_vnni\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ' |
    sed 's/^/{"cpu_flags": "/; s/ $/"}\n/'
cargo bench -q -p forge-ops --bench ternary_decode --no-run 2>/dev/null
bench() { cargo bench -q -p forge-ops --bench ternary_decode -- "$@" 2>/dev/null; }
for preset in ${PRESETS:-tiny 25m}; do
    bench --preset "$preset" --write "$dir/$preset"
    for t in ${THREADS:-1 2}; do
        for w in f32 ternary; do
            bench --preset "$preset" --threads "$t" --tokens "${TOKENS:-32}" \
                --read "$dir/$preset/$w.safetensors"
        done
    done
done
