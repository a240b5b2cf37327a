#!/usr/bin/env bash
# Starts a throwaway S3-compatible server (moto) on loopback for the tests,
# installing it into a venv under ~/.cache the first time. moto passes
# object_store's own conformance suite, conditional puts included.
#
# Usage: eval "$(scripts/s3.sh)"   -> exports DS_TEST_S3_ENDPOINT, AWS_* and DS_S3_PID
# Stop:  kill "$DS_S3_PID"
set -euo pipefail
VENV=${DS_MOTO_VENV:-$HOME/.cache/ds-moto}
if [ ! -x "$VENV/bin/moto_server" ]; then
  if ! python3 -m venv "$VENV" >&2 2>/dev/null; then
    # Debian splits venv out of python3.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
  fi
  "$VENV/bin/pip" install -q 'moto[server]==5.2.5' >&2
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=${TMPDIR:-/tmp}/ds-moto-$PORT.log
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { echo "moto_server died; see $LOG" >&2; exit 1; }
  sleep 0.1
done
cat <<EOT
export DS_S3_PID=$PID
export DS_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
EOT
