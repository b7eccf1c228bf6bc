#!/usr/bin/env bash
# The GPU checks, run on a lent GPU machine with the device tool (no venv there: the
# image's python3 has torch and lightning; cleanlab and hydra travel as wheels in .whl/).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/test_gpu.log"
timeout 120 python3 scripts/bench_vmap.py --device cuda --steps 200 2>&1 | tee "$OUT/bench_vmap_cuda.md"
timeout 200 python3 scripts/bench_cl_engine.py --device cuda --engines dcloop --no-real \
  --sizes 1281167x1000,100000x100 --pause 0 --out "$OUT/bench_cl_engine_cuda" 2>&1 | tail -30 | tee "$OUT/cl.log"
