#!/usr/bin/env bash
# On a CUDA machine with the repo and its venv (plus requirements-gpu.txt): the CUDA tests, then one GPU benchmark
# table (torch fp32/bf16/fp16 and TensorRT fp16, batch 1 and 64, ResNet-50 320x320 and DINOv2 322x322), in under
# 8 minutes. Usage: scripts/gpu_check.sh [OUT_DIR]   (PYTHON=... to pick the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_check_out}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$PWD/$OUT/cache}"

if [ ! -x "$PY" ]; then
  echo "gpu_check: no Python at $PY (create it with scripts/setup_venv.sh, or set PYTHON=...)" >&2
  exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: CUDA is not available to $PY (torch.cuda.is_available() is false): run this on a CUDA machine" >&2
  exit 2
fi
if ! "$PY" -c 'import tensorrt' 2>/dev/null; then
  echo "gpu_check: the tensorrt package is missing: $PY -m pip install -r requirements-gpu.txt" >&2
  exit 2
fi
mkdir -p "$OUT"
"$PY" -c 'import torch, tensorrt; print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__,
  "| CUDA", torch.version.cuda, "| TensorRT", tensorrt.__version__)'

echo "== CUDA tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider test/test_gpu.py test/test_preprocess_extractor.py::test_cuda_request_is_honoured_or_refused

echo "== GPU benchmark"
timeout 330 "$PY" -m training.cli bench --variants resnet50 dinov2 --backends torch tensorrt --devices cuda \
  --precisions fp32 bf16 fp16 --set tensorrt_precisions=[fp16] --batch-sizes 1 64 --no-reference --repeats 20 \
  --set warmup=5 --set gemm_size=8192 --set exporter=legacy --out "$OUT/gpu_bench.json" | tee "$OUT/gpu_bench.md"
