set -x
date -u; uptime; cat /proc/cpuinfo | grep "model name" | head -1; nproc
J=/work/wt-study/.venv/bin/jaxbench
S=/work/wt-study/configs/sweeps/cpu_study.py
# Study 1: XLA's default CPU fusion emitters vs the older loop emitter, 5 runs a point, alternated.
for k in 1 2 3 4 5; do
  $J sweep --sweep=$S --out=sweeps/default --repeats=$k
  XLA_FLAGS=--xla_cpu_use_fusion_emitters=false $J sweep --sweep=$S --out=sweeps/loop_emitter --repeats=$k
  uptime
done
date -u
# Study 2: float32 vs bfloat16, 3 runs a point, alternated.
for k in 1 2 3; do
  $J sweep --sweep=dtype_f32.py --out=sweeps/float32 --repeats=$k
  $J sweep --sweep=dtype_bf16.py --out=sweeps/bfloat16 --repeats=$k
  uptime
done
date -u
