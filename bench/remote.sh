#!/usr/bin/env bash
# Remote-cache hit for a model the size of the 25m preset (25,180,167 f32 parameters =
# 100,720,668 bytes) against a directory remote and against S3 requests to a local moto server:
# machine A builds the step and uploads it, machine B (another store) downloads it instead of
# building. Prints forge's own Uploaded/Downloaded lines (objects, bytes, time) and the wall time
# of B's whole `apply`.
#   bash bench/remote.sh            (FORGE=path/to/forge to pick the binary; default: debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
FORGE=${FORGE:-$PWD/target/debug/forge}
eval "$(.ci/install-moto)"
work=$(mktemp -d)
trap 'kill $moto_pid 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/model.yaml" <<'YAML'
version: 1
name: model-sized
phases:
  p:
    steps:
      model:
        op: exec
        with: { run: "head -c 100720668 /dev/urandom > $FORGE_OUTPUT/model.safetensors; echo '{}' > $FORGE_OUTPUT/config.json" }
YAML
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$FORGE_MOTO_SERVER" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto_pid=$!
until curl -s "http://127.0.0.1:$port" >/dev/null; do sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$port/bench" >/dev/null
export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
for remote in "$work/dir-remote" "s3://bench/forge"; do
  echo "== remote $remote"
  for m in a b; do
    mkdir -p "$work/$m" && cp "$work/model.yaml" "$work/$m/"
    (cd "$work/$m" && rm -rf .forge && start=$(date +%s.%N) \
      && NO_COLOR=1 "$FORGE" apply model.yaml --remote "$remote" 2>&1 | grep -E "Uploaded|Downloaded|Done" \
      && echo "   machine $m: apply wall $(python3 -c "import time; print(f'{time.time()-$start:.2f}')") s")
  done
done
