#!/usr/bin/env bash
# GPU check (issue 15): at most 8 minutes on one GPU. From the repository root:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=... to use another interpreter
#
# 1. the gpu-marked tests (pytest -m gpu), at most 3 minutes;
# 2. benchmarks/gpu_check.py: a CIFAR-shaped tiny zoo (synthetic images in CIFAR-10's file
#    format) trained under fp32, bf16 autocast, channels_last, torch.compile and seed
#    batching, printing samples/s, peak memory and each option's speed-up; at most 5 minutes.
# On a machine where torch sees no CUDA device it says so and exits with status 2.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: $("$PYTHON" -c 'import torch; print("torch", torch.__version__)') sees no" \
         "CUDA device here; nothing to check (run it on a machine where nvidia-smi lists a GPU)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

status=0
echo "== gpu-marked tests"
timeout 180 "$PYTHON" -m pytest -m gpu -q tests/ || status=1

echo "== tiny CIFAR-shaped zoo under each run option"
timeout 300 "$PYTHON" benchmarks/gpu_check.py --epochs 3 --images 10000 || status=1
exit $status
