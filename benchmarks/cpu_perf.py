"""CPU throughput of jaxbench's JAX model on the issue #7 config, float32 and bfloat16, the layers
scanned (the preset's default) and unrolled, side by side.

  python benchmarks/cpu_perf.py [--steps=6] [--repeats=3] [--remat=none] [--layers=scan,unrolled]

The config is configs/mpt.py:small: 6 layers, d_model 384, 6 heads, seq 256, batch 8, vocab 8192
(2,048 tokens a step). All variants are compiled first, then timed in turns (repeats x steps, each
step waited for), so the machine's noise hits them alike; medians are reported. MFU is given
against two peaks: the cached `jaxbench peak` figure, and the same matmul peak measured again
between the timed steps (one second per dtype per repeat), so a shared machine's load weighs on the
model and on its peak alike. The peers' figures quoted in issue #7 are for reference (measured
there, not here).
"""

from __future__ import annotations

import argparse
import time

import common
import jax

from jaxbench import data as data_lib
from jaxbench import peak as peak_lib
from jaxbench import program, runlog, sharding

CONFIG = "configs/mpt.py:small"
SHAPE = {"n_layers": 6, "d_model": 384, "n_heads": 6, "vocab_size": 8192}
# Issue #7's figures for this config on this machine type (tokens/s), for reference only.
PEERS = {
    "float32": "nanoGPT eager ~1,650, torch.compile ~1,530; MaxText (full remat) ~930",
    "bfloat16": "nanoGPT autocast eager ~2,400, torch.compile ~2,600; MaxText (full remat) ~780",
}


def prepare(dtype: str, remat: str, layers: str):
  c = common.load(CONFIG, dtype=dtype, model__remat=remat, model__scan_layers=layers == "scan")
  assert {k: c.model[k] for k in SHAPE} == SHAPE and (c.seq_len, c.batch_size) == (256, 8)
  s = program.build(c)
  state = program.init_state(s)
  batch = jax.device_put(data_lib.make(c, "train").batch(0), s.batch_sharding)
  t0 = time.perf_counter()
  with sharding.activation_mesh(s.mesh):
    step = program.jit_step(s).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  state, metrics = step(state, batch)  # first run: allocations, thread pools
  jax.block_until_ready(metrics)
  return {"c": c, "s": s, "step": step, "state": state, "batch": batch, "compile_s": compile_s,
          "times": [], "cpu": []}


def timed_steps(r: dict, n: int) -> list[float]:
  """Wall seconds of n steps, each waited for; the process's CPU seconds go to r["cpu"]."""
  times = []
  state = r["state"]
  for _ in range(n):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = r["step"](state, r["batch"])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    r["cpu"].append(time.process_time() - c0)
  r["state"] = state
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--remat", default="none")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--layers", default="scan,unrolled",
                      help="scan (model.scan_layers=True), unrolled, or both")
  args = parser.parse_args()
  print(common.header("benchmarks/cpu_perf.py")
        + f"\nconfig {CONFIG} (issue #7's), remat {args.remat}, {args.repeats} x {args.steps} steps")
  runs = {}
  for dtype in args.dtypes.split(","):
    for layers in args.layers.split(","):
      if layers not in ("scan", "unrolled"):
        parser.error(f"--layers: {layers!r}; allowed: scan, unrolled")
      runs[dtype, layers] = prepare(dtype, args.remat, layers)
      print(f"  {dtype} {layers}: compiled in {runs[dtype, layers]['compile_s']:.1f}s", flush=True)
  for i in range(args.repeats):
    for (dtype, layers), r in runs.items():
      times = timed_steps(r, args.steps)
      r["times"] += times
      r.setdefault("peaks", []).append(peak_lib.measure_peak(jax.local_devices(), dtype, seconds=1.0))
      print(f"  repeat {i} {dtype} {layers}: " + " ".join(f"{t * 1e3:.0f}" for t in times) + " ms",
            flush=True)
  print("\n| dtype | layers | compile s | median ms/step | tokens/s | TFLOP/s | `jaxbench peak` (cached) "
        "| MFU | peak measured between steps | MFU against it | issue #7 peers (tokens/s) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  tokens = {}
  for (dtype, layers), r in runs.items():
    c, s = r["c"], r["s"]
    med = common.median(r["times"])
    tokens[dtype, layers] = c.batch_size * c.seq_len / med
    tflops = s.flops["flops_per_token"] * tokens[dtype, layers] / 1e12
    peak = peak_lib.cached_peak(jax.local_devices(), dtype)
    ratio = runlog.mfu(tflops, peak.tflops if peak else None)
    mfu = (f"{ratio:.1%}" if ratio is not None
           else "above the peak" if peak and peak.tflops else "n/a")
    cached = f"{peak.tflops:.4f}" if peak and peak.tflops else "not cached"
    live = common.median(r["peaks"])
    print(f"| {dtype} | {layers} | {r['compile_s']:.1f} | {med * 1e3:.0f} | {tokens[dtype, layers]:,.0f} "
          f"| {tflops:.4f} | {cached} | {mfu} | {live:.4f} | {tflops / live:.1%} | {PEERS[dtype]} |")
  # Ratios of variants timed in turns, by wall time and by the process's CPU time per step (less
  # disturbed by other users of a shared machine).
  cpu = {k: common.median(r["cpu"]) for k, r in runs.items()}
  pairs = [((d, "unrolled"), (d, "scan"), f"{d}: unrolled / scan") for d in args.dtypes.split(",")]
  pairs += [(("bfloat16", m), ("float32", m), f"{m}: bfloat16 / float32") for m in args.layers.split(",")]
  print()
  for a, b, label in pairs:
    if a in runs and b in runs:
      print(f"{label} throughput: {tokens[a] / tokens[b]:.2f}x by wall time, "
            f"{cpu[b] / cpu[a]:.2f}x by CPU time per step ({cpu[a]:.2f}s against {cpu[b]:.2f}s)")


if __name__ == "__main__":
  main()
