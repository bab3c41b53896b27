#!/usr/bin/env bash
# Creates .venv and installs the project. `scripts/setup.sh dev` adds what the tests need.
# torch is installed first, pinned to the CPU build, only where the venv has none: a bare `torch`
# requirement would pull a multi-GB CUDA build. GPU users install their torch first (or set TORCH_SPEC).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
py=.venv/bin/python
if ! "$py" -c "import torch" 2>/dev/null; then
    "$py" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
if [ -n "$extra" ]; then
    "$py" -m pip install -q -e ".[$extra]"
else
    "$py" -m pip install -q -e ".[demo]"
fi
