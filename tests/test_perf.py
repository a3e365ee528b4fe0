"""Seeing where the time goes (profile_steps, dump_hlo), the chunked loss, and memory prediction."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NO_TORCH, read_json

from jaxbench import config, profiling, rundir, train


def nano(**overrides):
  return config.load_with_overrides("configs/mpt.py:nano", overrides)


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("profiled") / "run")
  c = nano(steps=5, warmup_steps_excluded=1, profile_steps="2:3", dump_hlo=True, peak_tflops=1.0,
           log_every=0)
  summary = train.run(c, workdir)
  return workdir, summary


def test_profile_steps_writes_a_trace_named_in_run_json(profiled_run):
  workdir, summary = profiled_run
  profile = read_json(os.path.join(workdir, "run.json"))["profile"]
  assert profile["steps"] == [2, 3] and profile["tool"] == "jax.profiler"
  assert any(f.endswith(".xplane.pb") for f in profile["files"]), profile
  for name in profile["files"]:
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  records = rundir.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  assert [bool(r.get("profiled")) for r in records] == [False, True, True, False, False]
  # Traced steps are slowed by the tracer: out of the summary, like the warm-up.
  assert summary["timed_steps"] == 2 and summary["status"] == "finished"


def test_top_ops_names_the_model_code_and_the_matmuls_share(profiled_run):
  import re
  text = profiling.top_ops(profiled_run[0], top=5)
  assert "ms/step" in text and "<- jit(train_step)" in text, text
  # With the HLO kept, the matmuls' share of the op time: the dot fusions the trace timed.
  share = re.search(r"matmuls \(dots and the fusions around them\): [\d.]+ ms/step, ([\d.]+)%",
                    text)
  assert share and 0 < float(share.group(1)) < 100, text


def test_dump_hlo_keeps_the_compiled_step(profiled_run):
  workdir, _ = profiled_run
  hlo = read_json(os.path.join(workdir, "run.json"))["hlo"]
  with open(os.path.join(workdir, hlo["optimized_hlo"])) as f:
    text = f.read()
  assert text.startswith("HloModule") and "ENTRY" in text
  with open(os.path.join(workdir, hlo["stablehlo"])) as f:
    assert "stablehlo" in f.read()


def test_off_by_default_writes_nothing(tmp_path):
  c = config.load_config_file("configs/mpt.py:nano")
  assert c.profile_steps == "" and c.dump_hlo is False
  assert config.profile_steps(c) is None


@pytest.mark.parametrize("value", ["3", "0:2", "4:2", "1:999", "a:b", "2:3:4"])
def test_bad_profile_steps_exits_2_before_compiling(tmp_path, capsys, value):
  workdir = tmp_path / "run"
  code = train.main(["train", "--config=configs/mpt.py:nano", f"--config.profile_steps={value}",
                     f"--workdir={workdir}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "profile_steps" in err[0], err
  assert not workdir.exists()


def test_chunked_cross_entropy_equals_the_plain_loss_and_gradients():
  from jaxbench import model, step
  chunk = 24  # 64 positions: two full chunks and a padded one
  c = nano(seq_len=64)
  cfg = model.ModelConfig.from_config(c, "xla")
  m = model.Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(1), (4, c.seq_len + 1), 0, cfg.vocab_size)
  params = jax.jit(m.init)(jax.random.key(0), tokens[:, :-1])["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  with jax.default_matmul_precision("highest"):
    plain = jax.jit(jax.value_and_grad(step.make_loss_fn(m, 0)))(params, tokens)
    chunked = jax.jit(jax.value_and_grad(step.make_loss_fn(m, chunk)))(params, tokens)
  np.testing.assert_allclose(chunked[0], plain[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(plain[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _loss_grad(c, chunk):
  """The jitted gradient of the step's loss for config `c`, and its (params, tokens)."""
  from jaxbench import model, step
  m = model.Transformer(model.ModelConfig.from_config(c, "xla"))
  tokens = jnp.zeros((2, c.seq_len + 1), jnp.int32)
  params = jax.eval_shape(m.init, jax.random.key(0), tokens[:, :-1])["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  return jax.jit(jax.grad(step.make_loss_fn(m, chunk))), (params, tokens)


@pytest.mark.parametrize("chunk", [0, 24])
def test_bf16_step_has_no_float32_matmul(chunk):
  """In bfloat16 every matmul of the step, the logits' and attention scores' backward included,
  takes bf16 operands (float32 ones would run as TF32 / f32 at half the rate or worse) and asks for
  a float32 result, the accumulation a GPU's GEMM does anyway (on a CPU it picks XLA's bf16
  kernels: see the next test)."""
  import re

  grad, args = _loss_grad(nano(seq_len=64, dtype="bfloat16"), chunk)
  text = grad.lower(*args).as_text()
  dots = re.findall(r"stablehlo.dot_general .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> "
                    r"(tensor<[^>]*>)", text)
  assert len(dots) >= 20, len(dots)
  assert not [d for d in dots if "f32" in d[0] or "f32" in d[1]], dots
  assert all(d[2].endswith("xf32>") for d in dots), dots
  # The output layer's logits are rounded to bf16 (the loss widens them as it reads them): on a
  # GPU the GEMM writes them in bf16, half the bytes of float32 ones for each of the loss's passes
  # over [tokens, vocab]. (Its weight gradient, [d_model, vocab], accumulates over the loss's
  # chunks in float32.)
  m = nano().model
  logits = {d[2] for d in dots if d[2].endswith(f"x{m.vocab_size}xf32>")
            and not d[2].startswith(f"tensor<{m.d_model}x")}
  assert logits
  for shape in logits:
    assert f": ({shape}) -> {shape.replace('xf32>', 'xbf16>')}" in text, shape


def test_cpu_bf16_step_runs_bf16_matmul_kernels():
  """XLA's CPU backend runs a dot of bf16 operands that asks for a bf16 result as a float32 dot
  (both operands widened), at half the rate of its bf16 kernels on a CPU with AVX512-BF16; asked
  for a float32 result it keeps the operands in bf16 (kernels.matmul), except where the lhs
  contracts its one leading dim (kernels._weight_grad). Every matmul of the compiled step must
  take bf16 operands (6% of the FLOPs did before kernels.matmul, 84% before
  kernels._weight_grad)."""
  from jaxbench import hlo

  grad, args = _loss_grad(nano(seq_len=64, dtype="bfloat16"), 0)
  census = hlo.dots(grad.lower(*args).compile().as_text())
  flops = {}
  for (lhs, rhs, dims, lhs_dtype, rhs_dtype, _), n in census.items():
    key = (lhs_dtype, rhs_dtype)
    flops[key] = flops.get(key, 0) + n * hlo.dot_flops(lhs, rhs, dims)
  assert set(flops) == {("bfloat16", "bfloat16")}, flops


@pytest.mark.parametrize("family,remat", [("mpt", "none"), ("llama", "none"), ("mpt", "dots"),
                                          ("mpt", "dots_no_batch")])
def test_cpu_scan_stacks_bf16_residuals_in_place(family, remat):
  """A scan over layers stacks each layer's residuals for the backward. XLA's CPU backend ran a
  bf16 stack's dynamic-update-slice in float32, widening and rewriting the whole stack every layer
  (the cost grows with the square of the depth); the model keeps bf16 residuals as their bits
  (kernels._kept), which it updates in place, and so do the remat policies that keep matmul results
  (kernels._rounded names the bits). No dynamic-update-slice of the compiled bf16 step may update a
  widened stack (8 did for mpt:nano before; with remat=dots, 7), but under a remat policy the
  stack of the blocks' inputs: a rematerialized block keeps its input, the scan's carry, which
  autodiff cannot carry as integer bits (jax 0.10.2 widens that stack; 0.11.2 and 0.12.1 keep it
  in bf16 too)."""
  import re

  from jaxbench import hlo

  c = config.load_with_overrides(f"configs/{family}.py:nano",
                                 dict(seq_len=64, dtype="bfloat16"))
  c.model.remat = remat
  assert c.model.scan_layers
  grad, args = _loss_grad(c, 0)
  updates, widened = 0, []
  for computation in hlo._computations(grad.lower(*args).compile().as_text())[0].values():
    ops = dict(re.findall(r"%(\S+) = \S+ ([\w-]+)\(", computation))
    updates += len(re.findall(r"dynamic-update-slice\(%", computation))
    widened += [shape for shape, operand in re.findall(
        r"= (\S+) dynamic-update-slice\(%([^,]+),", computation) if ops.get(operand) == "convert"]
  assert updates >= 8, updates  # the stacks are read from the HLO at all
  blocks_inputs = f"f32[{c.model.n_layers},2,{c.seq_len},{c.model.d_model}]" + "{3,2,1,0}"
  assert widened in ([[]] if remat == "none" else [[], [blocks_inputs]]), widened


def test_cpu_step_does_not_transpose_the_mlp_gradient():
  """XLA's CPU backend reads the MLP's weight gradients straight from the [tokens, d_ff] hidden
  gradient: no fusion writes it transposed, [d_ff, tokens], first (model.over_tokens; that copy,
  with GELU's derivative fused in, was 13% of a CPU step)."""
  import re

  c = nano(seq_len=64)
  grad, args = _loss_grad(c, 0)
  text = grad.lower(*args).compile().as_text()
  shape = rf"= f32\[{c.model.d_ff},{2 * c.seq_len}\]"
  transposed = [line for line in text.splitlines()
                if re.search(shape, line) and " fusion(" in line and "/mlp/" in line]
  assert not transposed, transposed


def test_cpu_attention_matmuls_write_head_major_rows():
  """Every attention matmul of the CPU step writes [.., S, D] or [.., S, S] rows, none the
  transposed [.., D, S] the projections' [B, S, heads, D] layout led XLA to (which it then copied
  back: those matmuls ran at half the rate; kernels.causal_attention)."""
  import re

  c = nano(seq_len=48)
  grad, args = _loss_grad(c, 0)
  text = grad.lower(*args).compile().as_text()
  d, s = c.model.d_model // c.model.n_heads, c.seq_len
  dots = [line for line in text.splitlines()
          if re.search(r"/attention/b\w+,b\w+->b\w+/dot_general", line)
          and re.search(r" = f32\[[\d,]+\]\S* (fusion|dot)\(", line)]
  shapes = [re.search(r" = f32\[([\d,]+)\]", line).group(1).split(",")[-2:] for line in dots]
  assert len(dots) >= 6, dots  # forward: scores, probs . v; backward: scores, d(probs), dv, dq, dk
  assert all(shape in ([str(s), str(d)], [str(s), str(s)]) for shape in shapes), shapes


def test_memory_prediction_grows_with_batch_and_covers_the_state():
  from jaxbench import memory, model
  c = config.load_config_file("configs/mpt.py:small")
  one_device = {"data": 1, "fsdp": 1, "tensor": 1}
  totals = []
  for batch in (1, 2, 8, 16):
    c.batch_size = batch
    totals.append(memory.predict(c, one_device)["total"])
  assert totals == sorted(totals) and len(set(totals)) == 4
  p = memory.predict(c, one_device)
  n_params = model.param_count(model.ModelConfig.from_config(c, "xla"))["total"]
  assert p["params"] == 4 * n_params  # float32
  assert p["total"] >= p["floor_state"] == 4 * 4 * n_params  # params, grads, two AdamW moments
  # Full remat keeps less than none; FSDP over 4 devices holds a quarter of the state.
  c.model.remat = "full"
  assert memory.predict(c, one_device)["activations"] < p["activations"]
  sharded = memory.predict(c, {"data": 1, "fsdp": 4, "tensor": 1})
  assert sharded["params"] <= p["params"] // 4 + 4 * 2048 * 384  # unsharded: the small norm/position tables
  # Chunking the loss shrinks the logits term to the chunk's share.
  c.seq_len, c.loss_chunk_size = 2048, 512
  chunked = memory.predict(c, one_device)["logits"]
  c.loss_chunk_size = 0
  assert chunked * 4 == memory.predict(c, one_device)["logits"]


def test_op_lines_of_cpu_tpu_and_gpu_traces():
  # Line names as jax.profiler writes them (the GPU ones from an H200 trace, 2026-11-28).
  assert profiling.is_op_line("/host:CPU", "tf_XLACpuThread/1")
  assert not profiling.is_op_line("/host:CPU", "python")
  assert profiling.is_op_line("/device:TPU:0", "XLA Ops")
  assert profiling.is_op_line("/device:GPU:0", "Stream #14(Memset,Compute)")
  assert not profiling.is_op_line("/device:GPU:0", "Launch Stats")


@pytest.mark.parametrize("block", [0, 16])
def test_step_matmuls_read_from_hlo_add_up_to_the_mfu_flops_and_rebuild_in_torch(block):
  """hlo.dots lists the compiled step's matmuls, a scanned layer's once per trip, and their FLOPs
  are the MFU count (jaxbench/flops.py) plus the scores the attention's backward recomputes
  (2 S d per token and layer), to within the norms' parameters that flops.py counts in N; with
  the attention in blocks of query rows (here 3 of 16 at seq 48), less the attention's work above
  the diagonal that the blocks skip (the MFU count keeps the whole [S, S], as PaLM's convention
  does). Each, as hlo.einsum_spec writes it for PyTorch (benchmarks/matmul_shapes.py), is the
  same contraction under torch.einsum."""
  from jaxbench import flops, hlo, kernels, model

  c = nano(seq_len=48)
  c.model.attention_block = block
  grad, args = _loss_grad(c, 0)
  census = hlo.dots(grad.lower(*args).compile().as_text())
  if block == 0:  # one block at seq 48
    assert sum(census.values()) == 25 * c.model.n_layers + 3  # a layer: 8 forward, 17 back; head 3
  # Unrolled, as many: XLA does not merge the attention backward's recomputed scores with the
  # forward's (kernels.causal_attention's barrier). Merged, the step kept every layer's [B, H, S, S]
  # float32 scores for the backward: deviceless for an H100, mpt-125m batch 8 unrolled needed
  # 27.7 GB of temporaries against 9.8 scanned (10.0 with the barrier).
  if block == 0:  # (XLA's CPU backend merges the blocks' slices: model._causal_attention_bwd)
    c.model.scan_layers = False
    unrolled, unrolled_args = _loss_grad(c, 0)
    text = unrolled.lower(*unrolled_args).compile().as_text()
    assert sum(hlo.dots(text).values()) == sum(census.values())
  computed = sum(n * hlo.dot_flops(*key[:3]) for key, n in census.items())
  tokens = args[1].shape[0] * c.seq_len
  m = model.ModelConfig.from_config(c, "xla")
  counted = flops.flops_per_token(m, c.seq_len)["flops_per_token"] * tokens
  share = kernels.scores_fraction(c.seq_len, kernels.query_block_rows(c.seq_len, block))
  assert share == (1.0 if block == 0 else 2 / 3)
  attention = 12 * m.n_layers * m.d_model * c.seq_len * tokens  # in the MFU count
  recomputed = 2 * m.n_layers * m.d_model * c.seq_len * tokens * share
  expected = counted - (1 - share) * attention + recomputed
  assert abs(computed - expected) <= 0.01 * computed, (computed, counted, recomputed, share)

  torch = pytest.importorskip("torch", reason=NO_TORCH)
  rng = np.random.default_rng(0)
  for lhs, rhs, dims, *_ in census:
    a, b = rng.standard_normal(lhs, np.float32), rng.standard_normal(rhs, np.float32)
    spec = hlo.einsum_spec(len(lhs), len(rhs), dims)
    np.testing.assert_allclose(torch.einsum(spec, torch.from_numpy(a), torch.from_numpy(b)),
                               jax.lax.dot_general(a, b, dims), rtol=1e-4, atol=1e-4)


def test_unrolled_layers_recompute_the_activation_as_scanned_ones_do():
  """The MLP's backward recomputes GELU from its input (kernels.activated_matmul). With unrolled
  layers XLA merged that with the forward's GELU and kept every layer's output: deviceless for the
  H200, mpt-350m batch 32 unrolled needed 50.9 GiB of temporaries against 40.5 scanned (38.9
  with the barrier). Each layer computes erf twice, forward and backward, either way."""
  import re

  def erfs(c):
    grad, args = _loss_grad(c, 0)
    return len(re.findall(r" erf\(", grad.lower(*args).compile().as_text()))

  c = nano(seq_len=32)
  scanned = erfs(c)  # a loop body's ops appear once in the HLO
  c.model.scan_layers = False
  assert scanned == 2 and erfs(c) == scanned * c.model.n_layers


GPU_HLO = r'''HloModule m

%gemm1 (x: f32[2048,512], y: f32[512,256]) -> f32[2048,256] {
  %y = f32[512,256]{1,0} parameter(1)
  %x = f32[2048,512]{1,0} parameter(0)
  %custom-call.1 = (f32[2048,256]{1,0}, s8[33554432]{0}) custom-call(f32[2048,512]{1,0} %x, f32[512,256]{1,0} %y), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}
  ROOT %get-tuple-element = f32[2048,256]{1,0} get-tuple-element((f32[2048,256]{1,0}, s8[33554432]{0}) %custom-call.1), index=0
}

%gemm_fusion_dot.3_computation (parameter_0: bf16[4,64,32], parameter_1: bf16[4,64,16]) -> bf16[4,32,16] {
  %parameter_0 = bf16[4,64,32]{2,1,0} parameter(0)
  %parameter_1 = bf16[4,64,16]{2,1,0} parameter(1)
  ROOT %dot.7 = bf16[4,32,16]{2,1,0} dot(bf16[4,64,32]{2,1,0} %parameter_0, bf16[4,64,16]{2,1,0} %parameter_1), lhs_batch_dims={0}, lhs_contracting_dims={1}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

%body (t: (s32[], bf16[4,64,32], bf16[4,64,16])) -> (s32[], bf16[4,64,32], bf16[4,64,16]) {
  %t = (s32[], bf16[4,64,32]{2,1,0}, bf16[4,64,16]{2,1,0}) parameter(0)
  %a = bf16[4,64,32]{2,1,0} get-tuple-element(%t), index=1
  %b = bf16[4,64,16]{2,1,0} get-tuple-element(%t), index=2
  %g = bf16[4,32,16]{2,1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_fusion_dot.3_computation
  %e = bf16[4,32,16]{2,1,0} custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config="{\"alpha_real\":1,\"dot_dimension_numbers\":{\"lhs_contracting_dimensions\":[\"1\"],\"rhs_contracting_dimensions\":[\"1\"],\"lhs_batch_dimensions\":[\"0\"],\"rhs_batch_dimensions\":[\"0\"]}}"
  ROOT %r = (s32[], bf16[4,64,32]{2,1,0}, bf16[4,64,16]{2,1,0}) tuple(%i, %a, %b)
}

ENTRY %main (p: f32[2048,512], q: f32[512,256]) -> f32[2048,256] {
  %p = f32[2048,512]{1,0} parameter(0)
  %q = f32[512,256]{1,0} parameter(1)
  %w = (s32[], bf16[4,64,32]{2,1,0}, bf16[4,64,16]{2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"6"}}
  ROOT %call = f32[2048,256]{1,0} call(%p, %q), to_apply=%gemm1
}
'''


def test_gpu_gemms_are_read_from_triton_fusions_and_cublas_calls():
  """On a GPU XLA runs a matmul as a Triton GEMM fusion (a dot inside, its operands' types printed
  or not) or a cuBLAS custom call (the dot's dimension numbers in its backend config, JSON or an
  escaped string); one in a loop body runs once per trip."""
  from jaxbench import hlo
  batched = ((4, 64, 32), (4, 64, 16), (((1,), (1,)), ((0,), (0,))), "bfloat16", "bfloat16",
             "bfloat16")
  plain = ((2048, 512), (512, 256), (((1,), (0,)), ((), ())), "float32", "float32", "float32")
  assert hlo.dots(GPU_HLO) == {batched: 12, plain: 1}
  assert hlo.dot_flops(*batched[:3]) == 2 * 4 * 32 * 16 * 64
  assert hlo.einsum_spec(3, 3, batched[2]) == "abc,abd->acd"  # batch a, contracting b
  # The instructions a trace would time as matmuls: the GEMM fusion and both cuBLAS calls.
  assert {"g", "e", "custom-call.1"} <= hlo.matmul_ops(GPU_HLO)
  assert not {"a", "b", "w", "call", "r"} & hlo.matmul_ops(GPU_HLO)
  assert hlo.control_flow_ops(GPU_HLO) == {"w", "call"}
  assert hlo.loops_without_trip_count(GPU_HLO) == 0


def test_dots_in_conditional_branches_and_loops_of_unknown_trip_count_are_counted():
  """Each branch of a conditional counts (an upper bound on what runs); a loop of no known trip
  count counts once and is reported."""
  from jaxbench import hlo

  def dots_of(f, *args):
    return hlo.dots(jax.jit(f).lower(*args).compile().as_text())

  x = jnp.ones((16, 32))
  w = jnp.ones((32, 32))
  branches = dots_of(lambda p, x, w: jax.lax.cond(p, lambda: x @ w, lambda: (x @ w) @ w),
                     True, x, w)
  assert sum(branches.values()) == 3, branches
  text = jax.jit(lambda n, x, w: jax.lax.fori_loop(0, n, lambda i, y: y @ w, x)).lower(
      4, x, w).compile().as_text()
  assert sum(hlo.dots(text).values()) == 1 and hlo.loops_without_trip_count(text) == 1


def test_top_ops_finds_each_gpu_kernels_model_code_and_counts_library_gemms(tmp_path, monkeypatch):
  """A GPU trace names kernels: a fusion's after its instruction ('.' written '_'), a cuBLAS call's
  after the library. The table names the model code of the first and counts both as matmuls."""
  import collections
  import json
  hlo_text = "\n".join([
      "HloModule m", "",
      "%gemm_fusion_dot.12_computation (a: bf16[8,8], b: bf16[8,8]) -> bf16[8,8] {",
      "  %a = bf16[8,8]{1,0} parameter(0)", "  %b = bf16[8,8]{1,0} parameter(1)",
      "  ROOT %dot.1 = bf16[8,8]{1,0} dot(%a, %b), lhs_contracting_dims={1}, "
      "rhs_contracting_dims={0}", "}", "",
      "ENTRY %main (p: bf16[8,8]) -> bf16[8,8] {",
      "  %p = bf16[8,8]{1,0} parameter(0)",
      '  %gemm_fusion_dot.12 = bf16[8,8]{1,0} fusion(%p, %p), kind=kCustom, '
      'calls=%gemm_fusion_dot.12_computation, metadata={op_name="jit(train_step)/mlp/up/dot"}',
      '  ROOT %loop_convert_fusion.9 = bf16[8,8]{1,0} fusion(%gemm_fusion_dot.12), kind=kLoop, '
      'calls=%c, metadata={op_name="jit(train_step)/mlp/gelu"}', "}", ""])
  (tmp_path / "step.hlo.txt").write_text(hlo_text)
  (tmp_path / "run.json").write_text(json.dumps({
      "profile": {"tool": "jax.profiler", "steps": [3, 4], "files": ["t.xplane.pb"]},
      "hlo": {"optimized_hlo": "step.hlo.txt"}}))
  kernels = {"nvjet_sm90_tst_176x128_64x5_1x2_h_bz_TNN": 40e6, "loop_convert_fusion_9": 30e6,
             "gemm_fusion_dot_12": 20e6,
             "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26": 10e6}
  monkeypatch.setattr(profiling, "op_times", lambda path: collections.Counter(kernels))
  text = profiling.top_ops(str(tmp_path))
  assert "loop_convert_fusion_9  <- jit(train_step)/mlp/gelu" in text, text
  assert "gemm_fusion_dot_12  <- jit(train_step)/mlp/up/dot" in text, text
  # matmuls: cuBLAS's kernel and the GEMM fusion's, 60 of 100 ms over two steps; not attention
  assert "matmuls (dots and the fusions around them): 30.0 ms/step, 60.0%" in text, text
