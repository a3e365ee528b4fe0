"""Predicted per-device memory (jaxbench/memory.py) against XLA's memory analysis of the compiled
step, and against a short run's measured peak; and the saving of the chunked cross-entropy.

  python benchmarks/memory.py [--skip_runs] [--only=compiled|chunk|runs|gpu] [--target=h100]

The `gpu` section compiles deviceless for a GPU description (`jaxbench compile`'s targets; needs
the cuda-aot extra) at seq 2048 in bf16, where the fused cuDNN attention changes what is kept.

Compile-only figures need no device memory (the step is lowered and compiled, never run), so
large configs are fine on a laptop. The measured peak on CPU is the process's peak RSS (the
runtime, Python and XLA's code included), so there it is an upper bound only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common
import jax

from jaxbench import config as config_lib
from jaxbench import memory, program

# (label, config spec, overrides): a few shapes and every remat policy.
COMPILE_CASES = [
    ("mpt:small f32 remat=none", "configs/mpt.py:small", {}),
    ("mpt:small f32 remat=full", "configs/mpt.py:small", {"model__remat": "full"}),
    ("mpt:small f32 remat=dots", "configs/mpt.py:small", {"model__remat": "dots"}),
    ("mpt:small f32 remat=dots_no_batch", "configs/mpt.py:small", {"model__remat": "dots_no_batch"}),
    ("mpt:small f32 batch=16", "configs/mpt.py:small", {"batch_size": 16}),
    ("mpt:small bf16", "configs/mpt.py:small", {"dtype": "bfloat16"}),
    ("llama:small f32", "configs/llama.py:small", {}),
    ("mpt:125m bf16 batch=2 remat=full", "configs/mpt.py:125m", {"batch_size": 2, "model__remat": "full"}),
]

# The chunked loss at MPT's vocab and sequence (a narrow, shallow model: the logits dominate).
CHUNK_CASE = ("configs/mpt.py:125m", {"model__d_model": 128, "model__n_heads": 2, "model__n_kv_heads": 2,
                                      "model__d_ff": 512,
                                      "model__n_layers": 2, "batch_size": 8, "dtype": "float32"})

# GPU shapes at seq 2048 (compiled deviceless for --target): the suite's sizes, both MLPs, every
# remat policy, GQA, and float32 (XLA's attention: cuDNN needs bf16).
GPU_CASES = [
    ("mpt:125m bf16 b8", "configs/mpt.py:125m", {"batch_size": 8}),
    ("mpt:125m bf16 b8 remat=full", "configs/mpt.py:125m", {"batch_size": 8, "model__remat": "full"}),
    ("mpt:125m bf16 b8 remat=dots", "configs/mpt.py:125m", {"batch_size": 8, "model__remat": "dots"}),
    ("mpt:125m bf16 b8 remat=dots_no_batch", "configs/mpt.py:125m",
     {"batch_size": 8, "model__remat": "dots_no_batch"}),
    ("mpt:350m bf16 b8", "configs/mpt.py:350m", {"batch_size": 8}),
    ("mpt:1b bf16 b4", "configs/mpt.py:1b", {"batch_size": 4}),
    ("llama:1b bf16 b4 (GQA, SwiGLU)", "configs/llama.py:1b", {"batch_size": 4}),
    ("mpt:125m f32 b2 (XLA attention)", "configs/mpt.py:125m", {"batch_size": 2, "dtype": "float32"}),
]

RUN_CASES = [
    ("mpt:tiny", "configs/mpt.py:tiny", {}),
    ("mpt:small", "configs/mpt.py:small", {}),
]


def compiled_memory(c) -> tuple[dict, float]:
  """XLA's memory analysis of the step compiled for this machine's devices (nothing allocated)."""
  s = program.build(c)
  state = program.abstract_state(s)
  batch = jax.ShapeDtypeStruct((c.microbatches, c.batch_size // c.microbatches, c.seq_len + 1),
                               jax.numpy.int32, sharding=s.batch_sharding)
  t0 = time.perf_counter()
  compiled = program.lower_step(s, state, batch).compile()
  return program.memory_analysis(compiled), time.perf_counter() - t0


def compare_compiled(out: list) -> None:
  print("\n## Predicted against XLA's memory analysis (compile only), MiB per device")
  print("| config | predicted total | XLA peak (arg+out-alias+temp) | predicted/XLA | "
        "predicted activations+logits+recompute | XLA temp | state floor |")
  print("|---|---|---|---|---|---|---|")
  for label, spec, overrides in COMPILE_CASES:
    c = common.load(spec, **overrides)
    mesh_shape = config_lib_validate(c)
    pred = memory.predict(c, mesh_shape)
    mem, _ = compiled_memory(c)
    peak = memory.xla_peak(mem)
    transient = (pred["activations"] + pred["logits"] + pred["recompute_layer"]
                 + pred["embedding_and_final_norm"] + pred["gradients"])
    print(f"| {label} | {common.mib(pred['total'])} | {common.mib(peak)} | "
          f"{pred['total'] / peak:.2f} | {common.mib(transient)} (incl. grads) | "
          f"{common.mib(mem.get('temp_size_in_bytes'))} | {common.mib(pred['floor_state'])} |",
          flush=True)
    out.append({"case": label, "predicted": pred, "xla": mem, "xla_peak": peak})


def compare_gpu(out: list, target_name: str) -> None:
  """The prediction, told which attention runs, against XLA's buffer assignment for a GPU."""
  from jaxbench import compile as compile_lib
  target = compile_lib.read_target(target_name)
  print(f"\n## Predicted against XLA's memory analysis for {target.device_name} (deviceless), "
        "seq 2048, MiB per device")
  print("| config | attention | predicted total | XLA total | predicted/XLA | predicted "
        "activations | XLA temp |")
  print("|---|---|---|---|---|---|---|")
  for label, spec, overrides in GPU_CASES:
    c = common.load(spec, seq_len=2048, **{"dtype": "bfloat16", **overrides})
    r = compile_lib.compile_report(c, target, "1x1x1", None, lambda _: None)
    attention = r["attention"]["implementation"]
    pred = memory.predict(c, config_lib_validate(c), attention=attention)
    xla = r["memory"]["total_bytes"] - r["memory"]["generated_code_bytes"]
    print(f"| {label} | {attention} | {common.mib(pred['total'])} | {common.mib(xla)} | "
          f"{pred['total'] / xla:.2f} | {common.mib(pred['activations'])} | "
          f"{common.mib(r['memory']['temp_bytes'])} |", flush=True)
    out.append({"gpu_case": label, "target": target.device_name, "attention": attention,
                "predicted": pred, "xla": r["memory"]})


def config_lib_validate(c):
  return config_lib.validate(c, len(jax.devices()))


def chunk_saving(out: list) -> None:
  spec, overrides = CHUNK_CASE
  print("\n## Chunked cross-entropy: vocab 50368, seq 2048, batch 8, d_model 128, 2 layers, "
        "float32 (compile only), MiB per device")
  print("| loss_chunk_size | XLA temp | XLA peak | predicted total |")
  print("|---|---|---|---|")
  rows = {}
  for chunk in (0, 1024, 512, 256):
    c = common.load(spec, loss_chunk_size=chunk, **overrides)
    mem, _ = compiled_memory(c)
    pred = memory.predict(c, config_lib_validate(c))
    rows[chunk] = mem
    print(f"| {chunk or 'off (whole sequence)'} | {common.mib(mem['temp_size_in_bytes'])} | "
          f"{common.mib(memory.xla_peak(mem))} | {common.mib(pred['total'])} |", flush=True)
  full = rows[0]["temp_size_in_bytes"]
  logits = 8 * 2048 * 50368 * 4
  print(f"\nfull-batch float32 logits alone: {common.mib(logits)} MiB; temp saved by chunk 512: "
        f"{common.mib(full - rows[512]['temp_size_in_bytes'])} MiB "
        f"({full / rows[512]['temp_size_in_bytes']:.1f}x less)")
  out.append({"chunk_case": overrides, "xla_by_chunk": {str(k): v for k, v in rows.items()}})


def measured_runs(out: list) -> None:
  print("\n## Predicted against a 3-step run's measured peak (CPU: process peak RSS), MiB")
  print("| config | predicted total | XLA peak | measured peak (RSS) |")
  print("|---|---|---|---|")
  for label, spec, overrides in RUN_CASES:
    c = common.load(spec, **overrides)
    pred = memory.predict(c, config_lib_validate(c))
    with tempfile.TemporaryDirectory() as tmp:
      args = [sys.executable, "-m", "jaxbench", "train", f"--config={spec}", "--config.steps=3",
              "--config.warmup_steps_excluded=1", "--config.peak_tflops=1", "--config.log_every=0",
              f"--workdir={tmp}/run"]
      env = dict(os.environ, PYTHONPATH=common.REPO)
      subprocess.run(args, env=env, check=True, capture_output=True, cwd=tmp)
      with open(f"{tmp}/run/summary.json") as f:
        summary = json.load(f)
      with open(f"{tmp}/run/run.json") as f:
        xla = json.load(f)["compile"]["xla_memory_analysis"]
    print(f"| {label} | {common.mib(pred['total'])} | {common.mib(memory.xla_peak(xla))} | "
          f"{common.mib(summary['peak_memory_bytes_per_device'])} |", flush=True)
    out.append({"run_case": label, "predicted": pred, "xla": xla,
                "measured_peak": summary["peak_memory_bytes_per_device"],
                "measured_source": summary.get("peak_memory_source")})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--skip_runs", action="store_true", help="compile-only figures")
  parser.add_argument("--only", choices=("compiled", "chunk", "runs", "gpu"), default=None,
                      help="one section only")
  parser.add_argument("--target", default="h100", help="the gpu section's `jaxbench compile` target")
  parser.add_argument("--json", default=None, help="also write the figures here")
  args = parser.parse_args()
  print(common.header("benchmarks/memory.py"))
  out: list = []
  sections = {"compiled": compare_compiled, "chunk": chunk_saving, "runs": measured_runs,
              "gpu": lambda out: compare_gpu(out, args.target)}
  for name, section in sections.items():
    if name == "gpu" and args.only != "gpu":
      continue  # needs the cuda-aot extra and JAX on the CPU: asked for by name
    if (args.only in (None, name)) and not (name == "runs" and args.skip_runs):
      section(out)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
