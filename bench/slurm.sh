#!/usr/bin/env bash
# Per-step overhead of `--executor slurm` on the cluster SLURM_CONF points at (`.ci/start-slurm`
# starts a one-node one): N no-op steps (`mkdir -p $FORGE_OUTPUT`, each its own key), applied
#   1. as a chain (each step waits for the one before: the latency a pipeline feels per step),
#   2. side by side (independent: the throughput of the driver and the controller),
# with the executor's phases per step from the driver's events and the jobs' own event files:
#   submit → start   sbatch, queueing, launching the job, `forge run-step` loading the pipeline
#   start → finish   the step itself under the lock, recorded in the store
#   finish → seen    until the driver learns the job ended (its polling)
# and the same pipelines applied locally for comparison; first, the cluster's own latency: N bare
# `sbatch --wrap true`-like jobs one after another, followed with `scontrol` every 50 ms.
#   bash bench/slurm.sh [N]      (default 20; FORGE=path/to/forge, default the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
FORGE=${FORGE:-$PWD/target/debug/forge}
N=${1:-20}
: "${SLURM_CONF:?start a cluster first: eval \"\$(.ci/start-slurm)\"}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$N" <<'PY'
import statistics, subprocess, sys, tempfile, time
n = int(sys.argv[1])
start, seen = [], []
with tempfile.NamedTemporaryFile() as f:
    for _ in range(n):
        t0 = time.time()
        job = subprocess.check_output(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", f"date +%s.%N > {f.name}"]).decode().strip().split(";")[0]
        while "JobState=COMPLETED" not in subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout:
            time.sleep(0.05)
        seen.append((time.time() - t0) * 1000)
        start.append((float(open(f.name).read()) - t0) * 1000)
def med(xs):
    xs = sorted(xs)
    return f"median {statistics.median(xs):6.0f} ms, p90 {xs[int(0.9 * (len(xs) - 1))]:6.0f} ms"
print(f"bare  sbatch {n} jobs:\n    submit -> start : {med(start)}\n    submit -> seen  : {med(seen)}")
PY

pipeline() { # $1 = chain|wide
  echo "version: 1"
  echo "name: overhead-$1"
  echo "phases:"
  echo "  p:"
  echo "    steps:"
  for i in $(seq 1 "$N"); do
    echo "      s$i:"
    echo "        op: exec"
    if [ "$1" = chain ] && [ "$i" -gt 1 ]; then echo "        needs: [s$((i - 1))]"; fi
    echo "        with: { run: \"mkdir -p \$FORGE_OUTPUT && echo $i > \$FORGE_OUTPUT/i\" }"
  done
}

for shape in chain wide; do
  for ex in local slurm; do
    d="$work/$shape-$ex" && mkdir -p "$d" && pipeline "$shape" > "$d/p.yaml"
    start=$(date +%s.%N)
    (cd "$d" && "$FORGE" --log-format json apply p.yaml --executor "$ex" > events.jsonl)
    end=$(date +%s.%N)
    python3 - "$d" "$shape" "$ex" "$start" "$end" "$N" <<'PY'
import glob, json, statistics, sys
d, shape, ex, start, end, n = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
wall = end - start
line = f"{shape:5} {ex:5} {n} steps: wall {wall:6.2f} s ({wall / n * 1000:7.1f} ms/step)"
if ex == "slurm":
    evs = [json.loads(l) for l in open(f"{d}/events.jsonl")]
    sub = {e["step"]: e["ts_unix_ms"] for e in evs if e["event"] == "submitted"}
    seen = {e["step"]: e["ts_unix_ms"] for e in evs if e["event"] == "job-state" and e["state"] == "COMPLETED"}
    started, finished = {}, {}
    for f in glob.glob(f"{d}/.forge/runs/*/jobs/*.jsonl"):
        for l in open(f):
            e = json.loads(l)
            if e["event"] == "started":
                started[e["step"]] = e["ts_unix_ms"]
            if e["event"] == "finished":
                finished[e["step"]] = e["ts_unix_ms"]
    def med(xs):
        xs = sorted(xs)
        return f"median {statistics.median(xs):6.0f} ms, p90 {xs[int(0.9 * (len(xs) - 1))]:6.0f} ms"
    steps = [s for s in sub if s in started and s in finished and s in seen]
    assert len(steps) == n, f"{len(steps)} of {n} steps have all four times"
    line += "\n    submit -> start : " + med([started[s] - sub[s] for s in steps])
    line += "\n    start  -> finish: " + med([finished[s] - started[s] for s in steps])
    line += "\n    finish -> seen  : " + med([seen[s] - finished[s] for s in steps])
    line += "\n    submit -> seen  : " + med([seen[s] - sub[s] for s in steps])
print(line)
PY
  done
done
