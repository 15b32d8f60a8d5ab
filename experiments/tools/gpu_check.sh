#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (~8 minutes on one H100/H200): install the CUDA jax of the
# pins, check the GPU paths against their references, benchmark clip/b16 and siglip/b16 in
# bf16 (MFU against the datasheet peak). Writes everything under $OUT (default
# workdirs/gpu_check): gpu_check.json (parity), bench_*.json, log files.
#
#   experiments/tools/gpu_check.sh              # a venv .venv_gpu with jax[cuda12] from PyPI
#   PYTHON=/path/python experiments/tools/gpu_check.sh   # a python that already has CUDA jax
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repo root
OUT="${OUT:-workdirs/gpu_check}"
mkdir -p "$OUT"

if [ -z "${PYTHON:-}" ]; then
  python3 -m venv .venv_gpu
  .venv_gpu/bin/pip install -q -U pip
  .venv_gpu/bin/pip install -q -r requirements.txt "jax[cuda12]==0.10.2"
  PYTHON=.venv_gpu/bin/python
fi
export JAX_PLATFORMS=cuda TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
"$PYTHON" -c "import jax; d = jax.devices()[0]; print(jax.__version__, d.platform, d.device_kind)"

# 1) Parity of the GPU kernels and mixed precision against their references (~1 min).
"$PYTHON" -m experiments.tools.gpu_check --json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/parity.log"

# 2) The B/16 train steps in bf16_mixed, then fp32 for comparison (~5 min).
for family in clip siglip; do
  for precision in bf16_mixed fp32; do
    "$PYTHON" -m experiments.benchmark \
      --config "experiments/configs/$family/b16.py:batch=${BATCH:-256}" \
      --config.precision="$precision" --steps 10 --warmup 3 --json "$OUT/bench_${family}_b16_${precision}.json" \
      2>&1 | tee "$OUT/bench_${family}_b16_${precision}.log"
  done
done
echo "gpu_check: results in $OUT"
