#!/usr/bin/env bash
# Set up segpipe on a fresh machine: a virtual environment in .venv with CPU PyTorch and segpipe.
#   bash deploy/bootstrap.sh          # what `segpipe run` needs (no GPU, no Redis, no network)
#   bash deploy/bootstrap.sh --dev    # plus test tools, redis-server, mosquitto and ffmpeg for the test suite
# Idempotent: a second run only checks. SEGPIPE_TORCH overrides the torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
PY=${PYTHON:-python3}
TORCH=${SEGPIPE_TORCH:-torch==2.13.0}

if [ "$dev" = 1 ]; then
  need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  command -v ffmpeg >/dev/null || need+=(ffmpeg)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "bootstrap: installing ${need[*]} with apt-get"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
      echo "bootstrap: please install ${need[*]} (e.g. sudo apt-get install ${need[*]})" >&2
      exit 1
    fi
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first and pinned: a bare `torch` requirement would resolve to a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "$TORCH"
if [ "$dev" = 1 ]; then
  "${pip[@]}" -e ".[dev]"
else
  "${pip[@]}" -e .
fi
echo "bootstrap: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
