#!/usr/bin/env bash
# forge engine benchmarks, each against a reference tool in the same run on the same input:
#   1. no-op re-apply of a generated 100-step pipeline: `forge apply` vs `dvc repro`
#   2. hashing 1 GiB: forge's cold hash vs `b3sum`, and forge's warm (stat cache) re-check
# Writes bench/RESULTS.md. Usage: bash bench/run.sh   (needs network once: pip, cargo install)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/bench/work
REPS=${REPS:-7}
mkdir -p "$WORK"

echo "== building forge (release)" >&2
cargo build --release --quiet
FORGE=$ROOT/target/release/forge

echo "== reference tools" >&2
if [ ! -x "$WORK/venv/bin/dvc" ]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install --quiet "dvc==3.67.1"
fi
DVC=$WORK/venv/bin/dvc
if ! command -v b3sum >/dev/null; then
  cargo install --quiet --locked b3sum --version 1.8.7 --root "$WORK/cargo"
  export PATH=$WORK/cargo/bin:$PATH
fi

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
elapsed() { calc "$(now) - $1"; }

# ---------------------------------------------------------------- 1. no-op re-apply, 100 steps
# Ten chains of ten steps; step k of a chain reads step k-1's output. Same graph for both tools.
P=$WORK/pipeline100
rm -rf "$P" && mkdir -p "$P"
{
  echo "version: 1"; echo "name: bench100"; echo "phases:"; echo "  p:"; echo "    steps:"
  for c in $(seq 0 9); do for k in $(seq 0 9); do
    if [ "$k" = 0 ]; then
      echo "      s${c}_${k}: { op: exec, with: { run: \"echo ${c}-${k} > \$FORGE_OUTPUT/o\" } }"
    else
      echo "      s${c}_${k}: { op: exec, inputs: { x: s${c}_$((k-1)) }, with: { run: \"cat \$FORGE_INPUT_X/o > \$FORGE_OUTPUT/o; echo ${c}-${k} >> \$FORGE_OUTPUT/o\" } }"
    fi
  done; done
} > "$P/forge.yaml"
(cd "$P" && "$FORGE" apply forge.yaml >/dev/null 2>&1)
forge_times=$(for i in $(seq "$REPS"); do t=$(now); (cd "$P" && "$FORGE" apply forge.yaml >/dev/null 2>&1); elapsed "$t"; done)
forge_noop=$(echo "$forge_times" | median)
ran=$(cd "$P" && "$FORGE" --log-format json apply forge.yaml 2>/dev/null | grep -c '"event":"started"' || true)

D=$WORK/dvc100
rm -rf "$D" && mkdir -p "$D"
(
  cd "$D"
  git init -q . && "$DVC" init -q && "$DVC" config core.analytics false
  {
    echo "stages:"
    for c in $(seq 0 9); do for k in $(seq 0 9); do
      echo "  s${c}_${k}:"
      if [ "$k" = 0 ]; then
        echo "    cmd: echo ${c}-${k} > o_${c}_${k}"
      else
        echo "    cmd: cat o_${c}_$((k-1)) > o_${c}_${k} && echo ${c}-${k} >> o_${c}_${k}"
        echo "    deps: [o_${c}_$((k-1))]"
      fi
      echo "    outs: [o_${c}_${k}]"
    done; done
  } > dvc.yaml
  "$DVC" repro -q >/dev/null 2>&1
)
dvc_times=$(for i in $(seq "$REPS"); do t=$(now); (cd "$D" && "$DVC" repro -q >/dev/null 2>&1); elapsed "$t"; done)
dvc_noop=$(echo "$dvc_times" | median)
ratio=$(calc "$dvc_noop / $forge_noop")

# ---------------------------------------------------------------- 2. hashing 1 GiB
F=$WORK/1gib.bin
if [ ! -f "$F" ] || [ "$(stat -c %s "$F")" != 1073741824 ]; then
  head -c 1073741824 /dev/urandom > "$F"
  touch -d '1 hour ago' "$F"
fi
cat "$F" > /dev/null  # same (warm) page cache for both tools
hash_json=$(cargo bench --quiet --bench hashing -- "$F" "$REPS" 2>/dev/null | tail -n 1)
b3_times=$(for i in $(seq "$REPS"); do t=$(now); b3sum "$F" > "$WORK/b3.out"; elapsed "$t"; done)
b3_best=$(echo "$b3_times" | sort -g | head -n 1)
b3_digest=$(cut -d' ' -f1 "$WORK/b3.out")
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$hash_json" "$1"; }
cold=$(field cold_seconds); warm=$(field warm_seconds); digest=$(field digest)
[ "$digest" = "$b3_digest" ] || { echo "digest mismatch: forge $digest, b3sum $b3_digest" >&2; exit 1; }
vs_b3=$(calc "$b3_best / $cold")
warm_x=$(calc "$cold / $warm")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
cat > bench/RESULTS.md <<MD
# Benchmark results

Command: \`bash bench/run.sh\` (REPS=$REPS). Machine: $(nproc) cores ($cpu), $(free -g | awk '/Mem:/{print $2}') GiB RAM.
Date: $(date -u +%Y-%m-%d). forge $("$FORGE" --version | cut -d' ' -f2), $("$DVC" --version | head -n1 | sed 's/^/dvc /'), $(b3sum --version).

## No-op re-apply of a 100-step pipeline

Ten chains of ten shell steps (\`bench/work/pipeline100/forge.yaml\`, \`bench/work/dvc100/dvc.yaml\`),
built once, then re-run with nothing changed; median of $REPS wall-clock runs of the whole CLI.

| tool | no-op re-apply | steps re-run |
|---|---|---|
| \`forge apply\` | $(printf '%.3f' "$forge_noop") s | $ran |
| \`dvc repro\` | $(printf '%.3f' "$dvc_noop") s | 0 |
| **forge speed-up** | **$(printf '%.1f' "$ratio")×** (goal ≥ 20×) | |

## Hashing 1 GiB

Random 1 GiB file, page cache warm for both tools, best of $REPS. forge hashes with blake3 memory-mapped
on all cores (\`hash_file_uncached\`, used for step outputs and stat-cache misses); the warm path is
the stat cache (dev, inode, size, mtime) recognising the unchanged file. Same digest from both tools.

| | time | throughput |
|---|---|---|
| \`b3sum\` | $(printf '%.3f' "$b3_best") s | $(calc "1 / $b3_best" | xargs printf '%.2f') GiB/s |
| forge cold hash | $(printf '%.3f' "$cold") s | $(field cold_gib_per_second | xargs printf '%.2f') GiB/s |
| forge warm re-check (stat cache) | $(printf '%.6f' "$warm") s | |
| **forge cold vs b3sum** | **$(printf '%.2f' "$vs_b3")×** (goal ≥ 0.9×) | |
| **warm vs cold** | **$(printf '%.0f' "$warm_x")×** (goal ≥ 100×) | |
MD
cat bench/RESULTS.md
