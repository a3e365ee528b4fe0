"""The model: parameter counts, causality, layouts (scan / unrolled, remat), attention kernels."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbench import config, flops, kernels, model



@pytest.fixture(autouse=True)
def exact_matmuls():
  """Comparisons at float32 precision (scoped: the peak table reads the global setting)."""
  with jax.default_matmul_precision("highest"):
    yield

MPT_PRESETS = ["nano", "tiny", "small", "125m", "350m", "760m", "1b", "3b", "7b", "13b", "30b", "70b"]
LLAMA_PRESETS = ["nano", "tiny", "small", "1b", "3b", "8b"]


def make(family="mpt", preset="nano", attention="xla", **model_overrides):
  c = config.load_config_file(f"configs/{family}.py:{preset}")
  for key, value in model_overrides.items():
    if key == "dtype":
      c.dtype = value
    else:
      c.model[key] = value
  return model.ModelConfig.from_config(c, attention)


def init(cfg, seq=16, seed=0):
  tokens = jnp.zeros((1, seq), jnp.int32)
  return nn.unbox(jax.jit(model.Transformer(cfg).init)(jax.random.key(seed), tokens)["params"])


@pytest.mark.parametrize("family,preset", [("mpt", p) for p in MPT_PRESETS]
                         + [("llama", p) for p in LLAMA_PRESETS])
def test_param_count_matches_tree(family, preset):
  cfg = make(family, preset)
  shapes = jax.eval_shape(lambda: model.Transformer(cfg).init(jax.random.key(0),
                                                               jnp.zeros((1, 8), jnp.int32)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes["params"])))
  assert n == model.param_count(cfg)["total"]


def test_param_counts_of_known_models():
  # MPT-125m as LLM Foundry builds it (no biases, learned positions, tied embeddings).
  assert model.param_count(make("mpt", "125m"))["total"] == 125_209_344
  # Llama 3.1 8B's published count: 8,030,261,248 parameters.
  assert model.param_count(make("llama", "8b"))["total"] == 8_030_261_248
  # Llama 3.2 1B (1,235,814,400 with tied embeddings; our preset unties them).
  tied = make("llama", "1b", tie_embeddings=True)
  assert model.param_count(tied)["total"] == 1_235_814_400


def test_flops_per_token_convention():
  cfg = make("mpt", "125m")
  f = flops.flops_per_token(cfg, 2048)
  n = 125_209_344 - 2048 * 768  # without the learned position table
  assert f["n_matmul_params"] == n
  assert f["flops_per_token"] == 6 * n + 12 * 12 * 768 * 2048
  untied = make("llama", "8b")
  # Untied: the input embedding is a lookup, the lm_head a matmul.
  assert flops.matmul_params(untied) == 8_030_261_248 - 128256 * 4096


@pytest.mark.parametrize("family,position", [("mpt", "learned"), ("mpt", "alibi"),
                                             ("llama", "rope")])
def test_causal(family, position):
  cfg = make(family, position=position)
  params = init(cfg)
  apply = jax.jit(model.Transformer(cfg).apply)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (2, 16)).astype(np.int32)
  changed = tokens.copy()
  changed[:, 10:] = rng.integers(0, cfg.vocab_size, (2, 6))
  a = apply({"params": params}, tokens)
  b = apply({"params": params}, changed)
  np.testing.assert_allclose(a[:, :10], b[:, :10], rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(a[:, 10:] - b[:, 10:])).max() > 1e-3


@pytest.mark.parametrize("family", ["mpt", "llama"])
def test_scan_equals_unrolled(family):
  unrolled = make(family, scan_layers=False)
  scanned = make(family, scan_layers=True)
  params = init(unrolled)
  stacked = model.stack_layers(params, unrolled.n_layers)
  tokens = np.random.default_rng(1).integers(0, unrolled.vocab_size, (2, 16)).astype(np.int32)

  def loss(cfg, p):
    logits = model.Transformer(cfg).apply({"params": p}, tokens[:, :-1])
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(unrolled, p)))(params)
  l2, g2 = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  g2 = model.unstack_layers(g2, unrolled.n_layers)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)
  assert jax.tree.structure(model.unstack_layers(stacked, unrolled.n_layers)) == jax.tree.structure(params)


# Every policy under scan; unrolled, the same nn.remat wraps each block, so one policy shows it.
@pytest.mark.parametrize("scan,policies", [(True, ("full", "dots", "dots_no_batch")),
                                           (False, ("full",))])
def test_remat_policies_same_gradients(scan, policies):
  base = make("llama", scan_layers=scan)
  params = init(base)
  tokens = np.random.default_rng(2).integers(0, base.vocab_size, (2, 17)).astype(np.int32)

  def grads(remat):
    cfg = make("llama", scan_layers=scan, remat=remat)
    def loss(p):
      logits = model.Transformer(cfg).apply({"params": p}, tokens[:, :-1])
      return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
          logits, tokens[:, 1:, None], -1)[..., 0])
    return jax.jit(jax.grad(loss))(params)

  reference = grads("none")
  for policy in policies:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 reference, grads(policy))


@pytest.mark.parametrize("remat", ["dots", "dots_no_batch"])
def test_dots_policies_keep_bf16_matmul_results_and_dots_recomputes_no_matmul(remat):
  """The model's bf16 matmuls accumulate in float32 and round (kernels._rounded): the "dots"
  policies keep the rounded results, as jax's policies kept bf16 dot results before (kept as
  float32 they took twice the bytes), as their bits (uint16, which a scan stacks in place), and
  "dots" recomputes no matmul in the backward pass."""
  import contextlib
  import io

  from jax.ad_checkpoint import print_saved_residuals

  def program(policy):
    cfg = make("mpt", scan_layers=False, n_layers=2, dtype="bfloat16", remat=policy)
    tokens = jnp.zeros((2, 16), jnp.int32)
    return (lambda p: model.Transformer(cfg).apply({"params": p}, tokens)
            .astype(jnp.float32).sum()), init(cfg)

  loss, params = program(remat)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    print_saved_residuals(loss, params)
  saved = [line.split()[0] for line in printed.getvalue().splitlines()
           if "from the argument" not in line]
  assert sum(t.startswith("u16[2,16,") for t in saved) >= 4 * 2  # q, k, v, out; 2 layers
  # float32: only the norms' statistics, and with "dots" the attention scores [B, K, G, S, T].
  wide = [t for t in saved if t.startswith("f32[") and not t.endswith(",1]")
          and not (remat == "dots" and t.count(",") == 4)]
  assert not wide, saved

  def matmuls(policy):
    loss, params = program(policy)
    return jax.jit(jax.grad(loss)).lower(params).as_text().count("stablehlo.dot_general")
  if remat == "dots":
    assert matmuls("dots") == matmuls("none")


@pytest.mark.parametrize("family,position", [("mpt", "learned"), ("mpt", "alibi"),
                                             ("llama", "rope")])
def test_attention_kernels_agree(family, position):
  xla = make(family, position=position, attention="xla")
  params = init(xla)
  tokens = np.random.default_rng(3).integers(0, xla.vocab_size, (2, 16)).astype(np.int32)
  a = jax.jit(model.Transformer(xla).apply)({"params": params}, tokens)
  b = jax.jit(model.Transformer(make(family, position=position, attention="jax")).apply)(
      {"params": params}, tokens)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_xla_attention_matches_naive_reference():
  rng = np.random.default_rng(4)
  b, s, h, k, d = 2, 8, 4, 2, 16
  q = rng.normal(size=(b, s, h, d)).astype(np.float32)
  kk = rng.normal(size=(b, s, k, d)).astype(np.float32)
  v = rng.normal(size=(b, s, k, d)).astype(np.float32)
  out = np.asarray(model.xla_attention(q, kk, v))
  for head in range(h):
    kv = head // (h // k)  # grouped-query: consecutive query heads share a kv head
    scores = np.einsum("bsd,btd->bst", q[:, :, head], kk[:, :, kv]) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out[:, :, head], np.einsum("bst,btd->bsd", p, v[:, :, kv]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("block", [0, 5])
def test_xla_attention_backward_matches_autodiff_and_keeps_no_probabilities(alibi, block):
  """kernels.causal_attention's own backward (probabilities recomputed from the saved
  log-normalizer) gives autodiff's gradients of jax.nn.dot_product_attention, bias included, and
  its pullback holds no [B, H, S, S] array; in one block of query rows (0: 16 rows here) and in
  blocks of 5, 5, 5 and 1 rows, each against the keys it sees."""
  rng = np.random.default_rng(5)
  b, s, h, k, d = 2, 16, 4, 2, 8
  blocks = kernels.query_blocks(s, kernels.query_block_rows(s, block))
  assert len(blocks) == (1 if block == 0 else 4)
  q, kk, v, g = (rng.normal(size=shape).astype(np.float32)
                 for shape in [(b, s, h, d), (b, s, k, d), (b, s, k, d), (b, s, h, d)])
  bias = model.alibi_bias(h, s) if alibi else None
  ours, pullback = jax.vjp(functools.partial(model.xla_attention, block=block), q, kk, v, bias)
  ref, ref_pullback = jax.vjp(model.dot_product_attention, q, kk, v, bias)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(pullback(g), ref_pullback(g)):
    if want is None:
      assert got is None
    else:
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  def per_batch_square(fn):  # the [B, ..., S, S] residuals (the bias, [H, S, S], is no batch's)
    return [x.shape for x in jax.tree.leaves(fn) if x.ndim >= 4 and x.shape[-2:] == (s, s)]

  assert not per_batch_square(pullback) and per_batch_square(ref_pullback)


def test_a_config_from_before_attention_block_builds_the_model():
  """run.json of a run made before model.attention_block existed (export-hf reads it back): the
  model and the memory prediction take the default blocks."""
  import ml_collections
  from jaxbench import memory
  saved = config.load_config_file("configs/mpt.py:nano").to_dict()
  del saved["model"]["attention_block"]
  c = ml_collections.ConfigDict(saved)
  assert model.ModelConfig.from_config(c, "xla").attention_block == 0
  assert memory.predict(c, {"data": 1, "fsdp": 1, "tensor": 1})["total"] > 0


def test_blocked_bf16_attention_is_the_unblocked_one_within_rounding():
  """In bfloat16, the attention in blocks of 64 query rows (the default at seq 256) gives the
  values and gradients of the same attention in one block to within bfloat16's rounding: the keys'
  gradients are summed over the blocks in float32 and rounded once, as one block rounds them."""
  rng = np.random.default_rng(8)
  b, s, h, d = 1, 256, 2, 16
  q, kk, v, g = (jnp.asarray(rng.normal(size=(b, s, h, d)), jnp.bfloat16) for _ in range(4))

  def run(block):
    out, pullback = jax.vjp(functools.partial(model.xla_attention, block=block), q, kk, v)
    return [np.asarray(x, np.float32) for x in (out, *pullback(g))]

  for blocked, whole in zip(run(0), run(s)):
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=2 ** -7 * np.abs(whole).max())


def test_layers_keep_no_normalized_tensor_for_the_backward():
  """A block's norms are fused with the matmuls they feed (kernels.normalized_matmuls), so the
  backward pass keeps each norm's input, not its output: no saved tensor is the normalization of
  another by any of the model's norms (the output is one [tokens, d] tensor per norm per layer,
  which the scan over layers would also stack). Both families share Block; the norms' own math
  is tested above."""
  cfg = make("mpt", scan_layers=False, n_layers=2)
  params = init(cfg)
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(p.dtype), params)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 16)), jnp.int32)
  _, pullback = jax.jit(lambda p: jax.vjp(
      lambda q: model.Transformer(cfg).apply({"params": q}, tokens), p))(params)
  saved = [jnp.reshape(x, (-1, cfg.d_model)) for x in jax.tree.leaves(pullback)
           if x.size == tokens.size * cfg.d_model]  # the [tokens, d] activations
  norms = [params[f"layers_{i}"][name] for i in range(cfg.n_layers)
           for name in ("attention_norm", "mlp_norm")]
  assert len(saved) >= 2 * cfg.n_layers
  normalize = jax.jit(kernels.normalize, static_argnums=(3, 4, 5))
  for x in saved:
    for n in norms:
      y = normalize(x, n["scale"], n.get("bias"), cfg.norm_eps, cfg.norm == "rmsnorm",
                    jnp.float32)
      assert not any(np.allclose(o, y, atol=1e-6) for o in saved)


@pytest.mark.parametrize("family", ["mpt", "llama"])
def test_scanned_layers_keep_no_bf16_copy_of_their_weights_for_the_backward(family):
  """The matmuls cast the float32 weights to bfloat16 inside their custom VJPs and again in the
  backward (kernels._recast), so the scan over layers stacks no bf16 copy of any layer's weights for
  the backward pass (2 bytes a parameter; the float32 weights it reads anyway are not copied)."""
  cfg = make(family, scan_layers=True, n_layers=3, dtype="bfloat16")
  params = init(cfg)
  tokens = jnp.zeros((2, 16), jnp.int32)
  _, pullback = jax.jit(lambda p: jax.vjp(
      lambda q: model.Transformer(cfg).apply({"params": q}, tokens), p))(params)
  saved = {(x.shape, x.dtype) for x in jax.tree.leaves(pullback)}
  kernels = [x.shape for path, x in jax.tree_util.tree_leaves_with_path(params["layers"])
             if "kernel" in jax.tree_util.keystr(path)]
  assert len(kernels) >= 5 and all(shape[0] == cfg.n_layers for shape in kernels)
  copies = [jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.uint16)]  # uint16: as kernels._kept keeps them
  assert not [shape for shape in kernels for dtype in copies if (shape, dtype) in saved], saved


@pytest.mark.parametrize("in_shape,axes,features", [
    ((16,), ("embed", "heads", "head_dim"), (4, 8)),  # a query projection
    ((4, 8), ("heads", "head_dim", "embed"), (16,)),  # the attention's output projection
])
def test_projection_draws_the_parameters_dense_general_draws(in_shape, axes, features):
  """Projection, which the fused norm-and-matmuls op and `matmul` read their weights from,
  creates the same names, shapes, values and logical axes as the nn.DenseGeneral it replaced."""
  init_kernel = model._init(0.5, axes)
  init_bias = nn.with_logical_partitioning(nn.initializers.normal(1.0), axes[len(in_shape):])
  in_axes = tuple(range(-len(in_shape), 0))

  class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.DenseGeneral(features, axis=in_axes, kernel_init=init_kernel,
                             bias_init=init_bias, name="query")(x)

  class Ours(nn.Module):
    @nn.compact
    def __call__(self, x):
      in_features = in_shape[0] if len(in_shape) == 1 else in_shape
      return model.Projection(in_features, features, True, jnp.float32, init_kernel, init_bias,
                              name="query")()

  key = jax.random.key(11)
  want = Dense().init(key, jnp.zeros((1, *in_shape)))["params"]
  got = Ours().init(key, jnp.zeros((1, *in_shape)))["params"]
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(got), nn.unbox(want))
  assert nn.get_partition_spec(got) == nn.get_partition_spec(want)


def test_rotary_is_hugging_face_half_split():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 4, 2, 8)).astype(np.float32)
  positions = np.arange(4)[None]
  out = np.asarray(model.rotary(jnp.asarray(x), jnp.asarray(positions), 10000.0))
  inv_freq = 1.0 / 10000 ** (np.arange(0, 8, 2) / 8)
  for pos in range(4):
    ang = pos * inv_freq
    cos, sin = np.cos(np.concatenate([ang, ang])), np.sin(np.concatenate([ang, ang]))
    v = x[0, pos]
    rotated = np.concatenate([-v[:, 4:], v[:, :4]], axis=-1)
    np.testing.assert_allclose(out[0, pos], v * cos + rotated * sin, rtol=1e-5, atol=1e-6)


def test_alibi_slopes_follow_mpt():
  bias = np.asarray(model.alibi_bias(8, 4))
  # 8 heads: slopes 2^-1 .. 2^-8; bias[h, i, j] = -slope_h * (i - j).
  np.testing.assert_allclose(bias[0, 3, 0], -3 * 2.0 ** -1)
  np.testing.assert_allclose(bias[7, 2, 1], -1 * 2.0 ** -8)
  odd = np.asarray(model.alibi_bias(6, 2))[:, 1, 0]  # non-power of two: MPT's interleave of 8
  np.testing.assert_allclose(-odd, 1.0 / 2 ** np.array([2, 4, 6, 8, 1, 3]))


def test_bfloat16_compute_float32_params():
  cfg = make("llama", dtype="bfloat16")
  params = init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = jax.jit(model.Transformer(cfg).apply)({"params": params}, jnp.zeros((1, 8), jnp.int32))
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("family", ["mpt", "llama"])
def test_a_seed_gives_the_same_weights_scanned_or_unrolled(family):
  """Runs that differ only in scan_layers start from the same weights (flax alone would derive an
  unrolled layer's keys from its name, so their loss curves differed from the first step)."""
  scanned, unrolled = make(family, scan_layers=True), make(family, scan_layers=False)
  key = jax.random.key(3)
  stacked = model.init_params(model.Transformer(scanned), key, 16)
  flat = model.init_params(model.Transformer(unrolled), key, 16)
  jax.tree.map(np.testing.assert_array_equal, flat,
               model.unstack_layers(stacked, unrolled.n_layers))
  boxed = jax.eval_shape(
      lambda: model.init_params(model.Transformer(unrolled), key, 16, unbox=False))
  assert jax.tree.structure(nn.unbox(boxed)) == jax.tree.structure(flat)
