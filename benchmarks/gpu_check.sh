#!/usr/bin/env bash
# Check a GPU machine: cifar10 b32 with XLA + bfloat16 (+ remat) and MirroredStrategy over all
# GPUs; prints images/s and peak GPU memory, exits non-zero on any failure (see gpu_check.py).
# Usage: benchmarks/gpu_check.sh [gpu_check.py flags]; PYTHON selects the interpreter
# (default: the repository's .venv if present, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
default_python=python3
if [ -x "$here/../.venv/bin/python" ]; then
    default_python="$here/../.venv/bin/python"
fi
exec "${PYTHON:-$default_python}" "$here/gpu_check.py" "$@"
