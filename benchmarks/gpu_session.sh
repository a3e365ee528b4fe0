#!/usr/bin/env bash
# Everything a session with one GPU checks, as one command (about 9 minutes on an H100/H200):
#   benchmarks/gpu_session.sh OUT_DIR [BUDGET_S [more gpu_suite.py flags]]
# 1. the card described for deviceless compiles elsewhere (`jaxbench compile --describe_local`);
# 2. the GPU suite (benchmarks/gpu_suite.sh: MPT 125m/350m/1b, JAX vs the torch.compile twin),
#    each at the largest batch whose step XLA compiles (deviceless, for that description) into
#    the memory pool, stopping at the first run that crashes;
# 3. each finished JAX run compiled deviceless for that description and for the shipped H100 one,
#    against the device's own compile, measured peak memory and step time
#    (benchmarks/aot_vs_device.py);
# 4. a TIGHT step (fits once, not beside a second step's temporaries) trained for a few steps
#    (benchmarks/tight_check.py);
# 5. if time is left (560 s in all), mpt-125m in float32 at batch 8, where `auto` runs the xla
#    attention, in query blocks (the default since the twelfth session, timed on CPUs only) and
#    in one block (`model.attention_block=2048`), two JAX runs alternated under blocks/;
# 6. if time is still left, mpt-125m scanned at batch 32 with and without XLA's
#    dynamic-slice fusion (GEMMs reading and writing the scan's stacked residuals in place instead
#    of copying: 5-8% of the scanned steps' kernel time in run 3; deviceless on jax 0.10.2 the
#    flag failed with cuBLAS GEMMs), two JAX runs alternated in one suite under dsfusion/.
#    (mpt-1b's matmuls under XLA and PyTorch, benchmarks/matmul_shapes.py, were timed in run 3.)
# Defaults sized for a 15-minute device lease (about 9 minutes of work): sizes 1b,125m,350m (the
# one with the MFU target first), batches up to 32, two steps traced in each JAX run (their HLO
# kept, so `python -m jaxbench.profiling RUN` names each kernel's model code) and in each twin
# run (its kernels in the run's top_ops.txt), and JAX with unrolled
# layers beside the scanned default (no per-layer residual copies); a suite budget of 420 s (330
# in the seventh session left out the 350m twin, which needs about 80 s, and 350m unrolled);
# later flags win.
# The work happens in a scratch folder; OUT_DIR receives at most eight files (the device tool's
# limit): session.log, stack.txt, local.txtpb, suite.md, suite.json, aot.md, tight.md and
# session.tgz with every run folder, log and trace.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${1:?usage: benchmarks/gpu_session.sh OUT_DIR [BUDGET_S [gpu_suite.py flags]]}"
BUDGET="${2:-420}"
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
. benchmarks/gpu_env.sh
WORK="$(mktemp -d /tmp/jaxbench-session.XXXXXX)"
pack() {
  for f in stack.txt local.txtpb suite.md suite.json aot/aot.md tight/tight.md; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"
  done
  # The device tool returns files of up to 16 MiB: past 15, leave out first the twin's raw traces
  # (their tables stay in top_ops.txt), then JAX's traces and HLO dumps too.
  local too_big=15728640
  tar czf "$OUT/session.tgz" -C "$WORK" . 2>/dev/null
  if [ "$(stat -c %s "$OUT/session.tgz" 2>/dev/null || echo 0)" -gt "$too_big" ]; then
    tar czf "$OUT/session.tgz" -C "$WORK" --exclude='*torch_trace.json*' . 2>/dev/null
  fi
  if [ "$(stat -c %s "$OUT/session.tgz" 2>/dev/null || echo 0)" -gt "$too_big" ]; then
    tar czf "$OUT/session.tgz" -C "$WORK" --exclude='*trace.json*' --exclude='*.xplane.pb' \
      --exclude='*/hlo/*' . 2>/dev/null
  fi
}
trap pack EXIT
{
  echo "== describe the local GPU"
  "$PYTHON" -m jaxbench compile --describe_local="$WORK/local.txtpb"
  "$PYTHON" -c "import torch; print('torch sees:', torch.cuda.get_device_properties(0))" 2>&1 | tail -1
  echo "== JAX on the GPU"
  if ! "$PYTHON" -c "import jaxbench, jax; d = jax.devices(); print(jax.__version__, d); assert d[0].platform == 'gpu', d"; then
    echo "JAX does not see the GPU here: stopping before the suite"; exit 1
  fi
  echo "== GPU suite (budget ${BUDGET}s)"
  TARGET=h100
  [ -f "$WORK/local.txtpb" ] && TARGET="$WORK/local.txtpb"
  benchmarks/gpu_suite.sh "$WORK" --budget_s="$BUDGET" --fail_fast --batch_search=compile \
    --target="$TARGET" --sizes=1b,125m,350m --max_batch=32 \
    --profile_jax=10:11 --profile_torch=10:11 \
    --variant=jax-unrolled:--config.model.scan_layers=False "$@"
  echo "== deviceless compile against the device"
  "$PYTHON" benchmarks/aot_vs_device.py --suite="$WORK" --timeout_s=120
  echo "== a TIGHT step, trained"
  "$PYTHON" benchmarks/tight_check.py --suite="$WORK" --timeout_s=120
  LEFT=$(( 560 - SECONDS ))
  if [ "$LEFT" -gt 80 ]; then
    echo "== mpt-125m float32 (the xla attention) in query blocks and in one block (${LEFT}s left)"
    timeout "$(( LEFT - 10 ))" benchmarks/gpu_suite.sh "$WORK/blocks" --budget_s=$(( LEFT - 40 )) \
      --sizes=125m --frameworks=jax --dtype=float32 --min_batch=8 --max_batch=8 \
      --timeout_s=$(( LEFT / 2 )) --variant=jax-oneblock:--config.model.attention_block=2048
  else
    echo "== the attention's query blocks: skipped (${LEFT}s left of the 560)"
  fi
  LEFT=$(( 560 - SECONDS ))
  if [ "$LEFT" -gt 80 ]; then
    echo "== mpt-125m scanned with and without XLA's dynamic-slice fusion (${LEFT}s left)"
    timeout "$(( LEFT - 10 ))" benchmarks/gpu_suite.sh "$WORK/dsfusion" --budget_s=$(( LEFT - 40 )) \
      --sizes=125m --frameworks=jax --min_batch=32 --max_batch=32 --timeout_s=$(( LEFT / 2 )) \
      --variant=jax-dsfusion:XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true
  else
    echo "== dynamic-slice fusion: skipped (${LEFT}s left of the 560)"
  fi
  echo "== done in ${SECONDS}s"
} 2>&1 | tee "$OUT/session.log"
