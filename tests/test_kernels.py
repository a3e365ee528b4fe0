"""The custom-VJP kernels (jaxbench/kernels.py): each gives autodiff's values and gradients of the
plain expression it replaces, and the model built on them (model.impl=tuned) gives the loss and
gradients of the same model in plain Flax with autodiff (model.impl=reference)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbench import kernels


@pytest.fixture(autouse=True)
def exact_matmuls():
  """Comparisons at float32 precision (scoped: the peak table reads the global setting)."""
  with jax.default_matmul_precision("highest"):
    yield


def test_query_blocks_tile_the_sequence():
  """The causal attention's query blocks: `block` rows each (the last one shorter where they do not
  divide the sequence), 64 by default, or an eighth of a longer sequence; one block where the rows
  cover the sequence. The blocks' scores, each block against the keys it sees, are the share
  scores_fraction gives of the [S, S] square."""
  assert kernels.query_block_rows(48) == 48 and kernels.query_block_rows(256) == 64
  assert kernels.query_block_rows(2048) == 256 and kernels.query_block_rows(2047) == 256
  assert kernels.query_block_rows(256, 100) == 100 and kernels.query_block_rows(256, 999) == 256
  assert kernels.query_blocks(256, 64) == [(0, 64), (64, 64), (128, 64), (192, 64)]
  assert kernels.query_blocks(16, 5) == [(0, 5), (5, 5), (10, 5), (15, 1)]
  assert kernels.query_blocks(48, 48) == [(0, 48)] and kernels.scores_fraction(48, 48) == 1.0
  assert kernels.scores_fraction(256, 64) == (64 * (64 + 128 + 192 + 256)) / 256 ** 2 == 0.625
  assert kernels.scores_fraction(16, 5) == (5 * 5 + 5 * 10 + 5 * 15 + 1 * 16) / 256


@pytest.mark.parametrize("rms", [False, True])
def test_normalized_matmuls_match_autodiff_of_a_norm_then_its_matmuls(rms):
  """The fused norm and matmuls (their backward recomputes the normalized tensor) give the values
  and gradients of a plain layer norm / RMS norm followed by each matmul, as autodiff forms them."""
  rng = np.random.default_rng(6)
  b, s, d, h, hd, f = 2, 5, 16, 4, 8, 24
  x, scale, bias = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                    for shape in [(b, s, d), (d,), (d,)])
  bias = None if rms else bias
  weights = (jnp.asarray(rng.normal(size=(d, h, hd)), jnp.float32),
             jnp.asarray(rng.normal(size=(d, f)), jnp.float32))

  def reference(x, scale, bias, weights):
    mean = 0.0 if rms else jnp.mean(x, -1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), -1, keepdims=True) + 1e-5)
    y = y * scale if bias is None else y * scale + bias
    return jnp.einsum("bsd,dhk->bshk", y, weights[0]), jnp.einsum("bsd,df->bsf", y, weights[1])

  def ours(x, scale, bias, weights):
    return kernels.normalized_matmuls(x, scale, bias, weights, 1e-5, rms, jnp.float32)

  def loss(fn):
    return lambda *args: sum(jnp.sum(jnp.sin(y)) for y in fn(*args))

  for got, want in zip(ours(x, scale, bias, weights), reference(x, scale, bias, weights)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  argnums = (0, 1, 3) if rms else (0, 1, 2, 3)
  got = jax.grad(loss(ours), argnums)(x, scale, bias, weights)
  want = jax.grad(loss(reference), argnums)(x, scale, bias, weights)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4), got, want)


@pytest.mark.parametrize("spec,shapes", [
    ("bshd,hde->bse", ((2, 8, 4, 16), (4, 16, 32))),  # the attention's output projection
    ("bsd,dv->bsv", ((2, 8, 32), (32, 50))),  # the output layer
])
def test_matmul_matches_einsum_and_accumulates_bf16_in_float32(spec, shapes):
  """`matmul` is jnp.einsum with autodiff's gradients in float32; in bfloat16 its result and
  both gradients are float32 products of the bf16 operands, rounded once."""
  keys = jax.random.split(jax.random.key(0), 3)
  a, b = (jax.random.normal(k, s) for k, s in zip(keys, shapes))
  out_shape = jnp.einsum(spec, a, b).shape
  g = jax.random.normal(keys[2], out_shape)
  y, vjp = jax.vjp(functools.partial(kernels.matmul, spec), a, b)
  want, want_vjp = jax.vjp(functools.partial(jnp.einsum, spec), a, b)
  np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
  for got_grad, want_grad in zip(vjp(g), want_vjp(g)):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)

  bf = [x.astype(jnp.bfloat16) for x in (a, b, g)]
  y, vjp = jax.vjp(functools.partial(kernels.matmul, spec), bf[0], bf[1])
  exact = [x.astype(jnp.float32) for x in bf]
  want, want_vjp = jax.vjp(functools.partial(jnp.einsum, spec, precision="highest"), *exact[:2])
  one_rounding = dict(rtol=2 ** -8, atol=1e-6)  # bf16 keeps 8 significant bits
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), want, **one_rounding)
  for got_grad, want_grad in zip(vjp(bf[2]), want_vjp(exact[2])):
    assert got_grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(got_grad.astype(jnp.float32), want_grad, **one_rounding)


@pytest.mark.parametrize("x_shape, g_shape, rows", [
    ((64, 12), (64, 40), 1),  # the MLP's up kernel: x has fewer features, x^T g
    ((64, 40), (64, 12), 1),  # its down kernel: more, (g^T x)^T
    ((63, 40), (63, 12), 1),  # split by 3
    ((61, 40), (61, 12), 1),  # a prime number of tokens is not split (nor run on bf16 kernels)
    ((4, 16, 12), (4, 16, 3, 4), 2),  # q: [batch, length] tokens, a [d, heads, head_dim] kernel
    ((4, 16, 12), (4, 16, 2, 4), 2)])  # grouped-query k/v: fewer features than x, (g^T x)^T
def test_weight_grad_contracts_the_tokens(x_shape, g_shape, rows):
  """kernels._weight_grad, the kernels' gradients, is x^T g over the leading token dims, x's
  features first; in bfloat16 a float32 product of the bf16 operands rounded once. Compiled for
  the CPU, its matmul keeps the bf16 operands (XLA widened the form autodiff writes to float32)."""
  from jaxbench import hlo

  kx, kg = jax.random.split(jax.random.key(1))
  x, g = jax.random.normal(kx, x_shape), jax.random.normal(kg, g_shape)
  r = tuple(range(rows))
  contract = functools.partial(jax.lax.dot_general, dimension_numbers=((r, r), ((), ())),
                               precision="highest")
  want = contract(x, g)
  got = kernels._weight_grad(x, g, rows)
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  xb, gb = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
  got = kernels._weight_grad(xb, gb, rows)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32),
                             contract(xb.astype(jnp.float32), gb.astype(jnp.float32)),
                             rtol=2 ** -8, atol=1e-6)
  compiled = jax.jit(kernels._weight_grad, static_argnums=2).lower(xb, gb, rows).compile()
  census = hlo.dots(compiled.as_text())
  assert census
  if x_shape[0] != 61:
    assert all(key[3:5] == ("bfloat16", "bfloat16") for key in census), census


def test_gelu_and_swiglu_match_autodiff_of_their_library_forms():
  """The activations' own backward passes (they keep only their inputs) give autodiff's gradients
  of jax.nn.gelu (exact) and silu(gate) * up; GELU's value is jax.nn.gelu's."""
  x = jnp.linspace(-9.0, 9.0, 4001)
  up = jnp.cos(x)
  np.testing.assert_allclose(kernels.gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  for ours, reference, args in [
      (kernels.gelu, lambda a: jax.nn.gelu(a, approximate=False), (x,)),
      (kernels.swiglu, lambda a, b: nn.silu(a) * b, (x, up))]:
    argnums = tuple(range(len(args)))
    got = jax.grad(lambda *a: jnp.sum(jnp.sin(ours(*a))), argnums)(*args)
    want = jax.grad(lambda *a: jnp.sum(jnp.sin(reference(*a))), argnums)(*args)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=2e-5)


def _loss_and_grads(cfg, params, tokens, chunk: int = 0):
  from jaxbench import model, step
  loss_fn = step.make_loss_fn(model.Transformer(cfg), chunk)
  return jax.jit(jax.value_and_grad(loss_fn))(params, tokens)


# Configurations that run every kernel and each way a layer calls it: both families (GELU and
# SwiGLU, LayerNorm with biases and RMSNorm, grouped-query heads), ALiBi's bias, query blocks,
# unrolled and scanned layers, every remat policy, the library attention (the other kernels
# alone) and the chunked loss (the logits' matmul outside the model's autodiff).
IMPL_CASES = {
    "mpt-scan": ("mpt", {}, 0),
    "mpt-alibi-bias-blocks-unrolled-dots": ("mpt", {"position": "alibi", "bias": True,
                                                    "attention_block": 5, "scan_layers": False,
                                                    "remat": "dots"}, 0),
    "mpt-jax-attention-full-chunked": ("mpt", {"attention": "jax", "remat": "full"}, 8),
    "llama-gqa-blocks-dots_no_batch": ("llama", {"attention_block": 6,
                                                 "remat": "dots_no_batch"}, 0),
}


@pytest.mark.parametrize("case", list(IMPL_CASES))
def test_reference_and_tuned_models_give_the_same_loss_and_gradients(case):
  """model.impl=reference (plain jnp, autodiff) and tuned (the custom VJPs) are one model: the
  same parameters, and in float32 the same loss and gradients to rounding."""
  import dataclasses

  from jaxbench import config, model
  family, overrides, chunk = IMPL_CASES[case]
  c = config.load_config_file(f"configs/{family}.py:nano")
  c.model.n_layers = 2
  for key, value in overrides.items():
    c.model[key] = value
  tuned = model.ModelConfig.from_config(c, overrides.get("attention", "xla"))
  reference = dataclasses.replace(tuned, impl="reference")
  assert tuned.impl == "tuned"
  key = jax.random.key(0)
  params = model.init_params(model.Transformer(tuned), key, 16)
  jax.tree.map(np.testing.assert_array_equal, params,
               model.init_params(model.Transformer(reference), key, 16))
  rng = np.random.default_rng(9)
  # Parameters away from their initial values, so that norm scales and biases matter too.
  params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(p.dtype), params)
  tokens = jnp.asarray(rng.integers(0, tuned.vocab_size, (2, 17)), jnp.int32)
  loss, grads = _loss_and_grads(tuned, params, tokens, chunk)
  ref_loss, ref_grads = _loss_and_grads(reference, params, tokens, chunk)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale),
               grads, ref_grads)


def test_reference_ops_are_plain_autodiff():
  """The reference ops have no custom VJP: their pullbacks keep what autodiff keeps (the
  attention's [.., S, S] probabilities), where the tuned attention keeps none."""
  rng = np.random.default_rng(10)
  b, s, kv, g, d = 1, 8, 2, 2, 4
  q = jnp.asarray(rng.normal(size=(b, s, kv, g, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, kv, d)), jnp.float32) for _ in range(2))

  def squares(impl):
    attend = kernels.IMPLEMENTATIONS[impl].causal_attention
    _, pullback = jax.vjp(lambda q, k, v: attend(q, k, v, None, s), q, k, v)
    return [x.shape for x in jax.tree.leaves(pullback) if x.shape[-2:] == (s, s)]

  assert squares("reference") and not squares("tuned")
  assert set(kernels.IMPLEMENTATIONS) == {"tuned", "reference"}


def test_flops_and_the_state_do_not_depend_on_impl_and_reference_keeps_more():
  """model.impl changes neither the parameters, the MFU's FLOPs (the model's, not the hardware's)
  nor the train state; the memory prediction adds what autodiff keeps (memory.py) to the
  activations, not to the state."""
  from jaxbench import config, flops, memory, model
  one_device = {"data": 1, "fsdp": 1, "tensor": 1}
  for family in ("mpt", "llama"):
    tuned, reference = (config.load_with_overrides(f"configs/{family}.py:nano", {"model.impl": i})
                        for i in ("tuned", "reference"))
    cfgs = [model.ModelConfig.from_config(c, "xla") for c in (tuned, reference)]
    assert flops.flops_per_token(cfgs[0], 64) == flops.flops_per_token(cfgs[1], 64)
    p_tuned, p_reference = (memory.predict(c, one_device) for c in (tuned, reference))
    assert p_tuned["floor_state"] == p_reference["floor_state"]
    assert p_reference["activations"] > p_tuned["activations"]


def test_a_checkpoint_resumes_under_the_other_impl_timed_from_the_restart():
  """model.impl keeps the parameters (not in rundir.MUST_MATCH) but decides a step's time: a
  resumed run's segments under the two impls are not timed as one."""
  from jaxbench import config, rundir, runlog
  reference = config.load_with_overrides("configs/mpt.py:tiny", {"model.impl": "reference"})
  reference = reference.to_dict()
  tuned = config.load_config_file("configs/mpt.py:tiny").to_dict()
  rundir.check_compatible(tuned, reference)  # no ConfigError
  change = runlog.timing_change(runlog.timing_context({"config": tuned}),
                                runlog.timing_context({"config": reference}))
  assert change == "config.model.impl tuned -> reference"
