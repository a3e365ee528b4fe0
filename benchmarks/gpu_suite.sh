#!/usr/bin/env bash
# The GPU suite in one command, for one H100 or H200 (about 8 minutes):
#   benchmarks/gpu_suite.sh OUT_DIR [more gpu_suite.py flags]
# MPT 125m / 350m / 1b at seq 2048 in bfloat16, JAX (attention auto) and the PyTorch twin
# (torch.compile, SDPA) at the largest batch predicted to fit; run folders, compare reports,
# suite.md and the software stack under OUT_DIR. Runs from a checkout without installing it
# (the GPU machine allows no installs): wheels for missing pure-Python packages (ml-collections)
# may be carried in .whl/ at the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: benchmarks/gpu_suite.sh OUT_DIR [gpu_suite.py flags]}"
shift
mkdir -p "$OUT"
. benchmarks/gpu_env.sh
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  "$PYTHON" -c "import sys, jax, jaxlib, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'hip', torch.version.hip)" 2>/dev/null || echo "torch: not installed"
  git rev-parse HEAD 2>/dev/null || true
} > "$OUT/stack.txt" 2>&1
cat "$OUT/stack.txt"
exec "$PYTHON" benchmarks/gpu_suite.py --out="$OUT" "$@"
