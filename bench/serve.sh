#!/usr/bin/env bash
# forge serve under load, for bench/RESULTS.md: the Rust bench (bench/serve.rs: a store of 1,000
# runs × 1,000 events, 50 keep-alive clients on GET /api/pipeline/status, 100 WebSocket clients)
# and then `wrk` (apt-get install wrk) against a server on the same store.
#   bash bench/serve.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
dir="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
cargo bench --bench serve -- --seconds "$seconds" --keep "$dir" </dev/null
cargo build --release -q
(cd "$dir" && exec "$OLDPWD/target/release/forge" serve bench.yaml --port 0 >serve.out 2>/dev/null) &
server=$!
for _ in $(seq 100); do grep -q http "$dir/serve.out" 2>/dev/null && break; sleep 0.1; done
url="$(grep -o 'http://[^/]*' "$dir/serve.out")/api/pipeline/status"
if command -v wrk >/dev/null; then
  echo "wrk -t2 -c50 -d${seconds}s --latency $url"
  wrk -t2 -c50 -d"${seconds}s" --latency "$url"
else
  echo "wrk is not installed (apt-get install wrk): skipped"
fi
