"""The run configuration: defaults for every key, and the checks that run before anything compiles.

Config files (configs/mpt.py, configs/llama.py) start from `base_config()` and fill in a preset.
Every key is documented here, once. `validate()` turns any inconsistency into a `ConfigError`
naming the key and what is allowed; the command line turns that into exit code 2.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re

import ml_collections

from jaxbench import hostalloc
from jaxbench.errors import ConfigError

# Names the rest of the code accepts; validate() quotes these lists in its messages.
FAMILIES = ("mpt", "llama")
FRAMEWORKS = ("jax", "torch")
TORCH_PARALLEL = ("auto", "none", "ddp", "fsdp")
TORCH_INITS = ("jax", "torch")
TORCH_MATMUL_PRECISIONS = ("highest", "high", "medium")
DTYPES = ("bfloat16", "float32")
ATTENTIONS = ("auto", "xla", "jax", "cudnn", "pallas")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
IMPLS = ("tuned", "reference")
POSITIONS = ("learned", "alibi", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
SYNTHETIC = ("markov", "uniform")
MESH_AXES = ("data", "fsdp", "tensor")

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "mpt.py") + ":tiny"

# loss_chunk_size of the CPU presets (configs/*.py nano, tiny, small). On a CPU, chunks whose logits
# stay near the last-level cache are faster than the whole batch's at once: mpt:small and
# llama:small ([8, 128, 8192] float32 logits a chunk, 32 MiB) ran 3-8% faster in bfloat16 than with
# the plain loss, alternated on a 2-core AMD EPYC with 32 MiB of L3 (chunks of 64 were slower
# again, one chunk of 256 slower than the plain loss; benchmarks/RESULTS.md, goal 1). The other
# presets keep the base default, sized for the GPU's memory.
CPU_LOSS_CHUNK_SIZE = 128


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, with its default. Config files override what their preset changes."""
  c = ml_collections.ConfigDict()
  # Which implementation trains: `jax` (Flax + Optax) or `torch` (the PyTorch twin in
  # jaxbench/twin/, the same model, data, optimizer and run directory; the `torch` extra).
  c.framework = "jax"
  # Model family and preset name, set by the config file (recorded in run.json).
  c.family = "mpt"
  c.preset = "tiny"
  # Optimizer steps to run.
  c.steps = 100
  # Steps left out of the timing summary (compile time is always apart).
  c.warmup_steps_excluded = 3
  # Global batch in sequences per optimizer step, over all devices and microbatches.
  c.batch_size = 8
  # Gradient-accumulation microbatches per optimizer step (a scan inside the jitted step).
  c.microbatches = 1
  # Tokens per training sequence.
  c.seq_len = 128
  # One seed for parameter init and the data.
  c.seed = 0
  # Compute dtype of activations and matmuls; parameters and optimizer state stay float32.
  c.dtype = "float32"
  # The loss forms the logits this many sequence positions at a time, with their gradients in the
  # same pass (no recomputation), so only [batch, loss_chunk_size, vocab] logits exist at
  # once instead of the whole batch's; 0, or a sequence no longer than this: all positions at once.
  # Same function either way, to float32 rounding.
  c.loss_chunk_size = 512
  # Print a progress line every this many steps (0: only the first and last).
  c.log_every = 10
  # Run-to-run identical losses on the backend, at its cost (GPU: XLA's deterministic ops).
  c.deterministic = False
  # The host's malloc (jaxbench/hostalloc.py): `reuse` keeps freed memory, and JAX runs
  # single-device CPU steps on the calling thread, so XLA's CPU step reuses its temporaries'
  # pages instead of faulting them in afresh every step (1.09x the CPU step rate); `auto` = reuse
  # when the run computes on the CPU; `system` = as the process started. Set once per process,
  # before any backend starts; both frameworks; recorded in run.json.
  c.host_allocator = "auto"
  # Per-device peak TFLOP/s for MFU; 0 = the built-in table, else the cache of `jaxbench peak`.
  c.peak_tflops = 0.0
  # Also write every metric of the run as TensorBoard scalars in the run directory (needs the
  # `tensorboard` extra: tensorboardX), so `tensorboard --logdir` over runs or a sweep shows them.
  c.tensorboard = False
  # Profiler trace of steps START:END (inclusive, numbered as in metrics.jsonl, e.g. "5:7") in
  # RUN_DIR/profile/, named in run.json (JAX: jax.profiler); empty: off, at no cost. The traced
  # steps are left out of the timing summary: tracing slows them.
  c.profile_steps = ""
  # Keep the compiled step's optimized HLO (and its StableHLO) in RUN_DIR/hlo/, named in run.json.
  c.dump_hlo = False
  # Before allocating anything, compare the compiled step's memory (XLA's memory analysis) with
  # what the device (a GPU's allocator pool) or the host (a CPU run: MemAvailable and any cgroup
  # limit) has, and exit 2 with the figures when it does not fit; False: try anyway.
  c.memory_check = True

  c.model = ml_collections.ConfigDict()
  m = c.model
  # Transformer blocks.
  m.n_layers = 4
  # Width of the residual stream (the embedding size).
  m.d_model = 128
  # Attention heads; must divide d_model (head dim = d_model / n_heads).
  m.n_heads = 4
  # Key/value heads for grouped-query attention; must divide n_heads (= n_heads: plain MHA).
  m.n_kv_heads = 4
  # Hidden width of the MLP.
  m.d_ff = 512
  # Token ids 0 .. vocab_size - 1 (the embedding's rows); with data.path, the data's own unless
  # given on the command line.
  m.vocab_size = 512
  # Longest sequence the model supports (size of the learned position table).
  m.max_seq_len = 2048
  # Position encoding: learned (MPT/GPT), alibi (MPT option), rope (Llama; half-split convention).
  m.position = "learned"
  # Rotary base frequency (rope only).
  m.rope_theta = 10000.0
  # Normalization: layernorm (MPT/GPT) or rmsnorm (Llama).
  m.norm = "layernorm"
  # The normalization's epsilon.
  m.norm_eps = 1e-5
  # MLP: gelu (exact GELU, MPT) or swiglu (Llama).
  m.mlp = "gelu"
  # Biases in linear layers and LayerNorm.
  m.bias = False
  # Output projection shares the token embedding matrix.
  m.tie_embeddings = True
  # Std of the normal init; residual output projections are scaled by 1/sqrt(2 n_layers).
  m.init_std = 0.02
  # Attention implementation: auto (best available on the backend), xla (einsum + softmax),
  # jax (jax.nn.dot_product_attention, XLA path), cudnn (cuDNN fused attention, CUDA only),
  # pallas (Pallas's Triton flash attention: one fused kernel for NVIDIA and AMD GPUs; interpreted,
  # slowly, on the CPU; jax 0.12.0 or older: 0.12.1 removed it).
  m.attention = "auto"
  # Query rows per block of the xla attention, which skips the blocks above the causal diagonal:
  # 0 picks (64 rows, or seq_len / 8 where more); >= seq_len computes the whole [S, S] scores.
  m.attention_block = 0
  # Rematerialization: none, full (save nothing), dots (save matmul outputs),
  # dots_no_batch (save matmuls without batch dims: weights-side products).
  m.remat = "none"
  # nn.scan over layers: compile time independent of depth.
  m.scan_layers = True
  # The layers' ops: tuned (the hand-written backward passes of jaxbench/kernels.py, which keep
  # less for the backward pass; docs/kernels.md) or reference (the same model in plain Flax and
  # jnp, differentiated by autodiff: XLA before the hand-written kernels). Same parameters and
  # function, to rounding; attention_block and loss_chunk_size apply to both. The twin has no
  # custom kernels: it runs autograd either way.
  m.impl = "tuned"

  c.optimizer = ml_collections.ConfigDict()
  o = c.optimizer
  # AdamW with linear warm-up then cosine decay: the peak learning rate.
  o.lr = 3e-3
  # Steps of linear warm-up from 0 to lr.
  o.warmup_steps = 10
  # Cosine decay ends at lr * min_lr_ratio at the last step.
  o.min_lr_ratio = 0.1
  # AdamW's decay rate of the first moment.
  o.b1 = 0.9
  # AdamW's decay rate of the second moment.
  o.b2 = 0.95
  # AdamW's epsilon, added outside the square root (Optax's convention).
  o.eps = 1e-8
  # Decoupled weight decay (lr * weight_decay * param), on matrices only.
  o.weight_decay = 0.1
  # Apply weight decay to embeddings too (norm scales and biases are never decayed).
  o.decay_embeddings = False
  # Global-norm gradient clipping; 0 disables.
  o.clip_norm = 1.0

  c.data = ml_collections.ConfigDict()
  # A folder made by `jaxbench prepare`; empty: synthetic tokens.
  c.data.path = ""
  # Synthetic tokens: markov (a fixed random successor table, learnable: loss falls towards
  # ln(markov_branching)) or uniform (i.i.d. tokens, for pure throughput).
  c.data.synthetic = "markov"
  # Successors of each token in the markov data (the loss floor is ln of this).
  c.data.markov_branching = 4

  c.eval = ml_collections.ConfigDict()
  # Held-out loss every this many steps (0: never): the val split of data.path, or held-out
  # synthetic batches. Its time is recorded apart and is not part of any step's time.
  c.eval.every = 0
  # Batches (of batch_size sequences) per evaluation.
  c.eval.batches = 4

  c.checkpoint = ml_collections.ConfigDict()
  # Save a checkpoint every this many steps, and at the last step (0: no checkpoints): Orbax's
  # for JAX runs, torch.distributed.checkpoint's for the twin (framework=torch). A run started
  # again with the same --workdir resumes from the latest one.
  c.checkpoint.every = 0
  # Checkpoints kept (older ones are deleted).
  c.checkpoint.keep = 3
  # Write in the background while training goes on (the device-to-host copy is not); JAX runs
  # only: the twin's saves are synchronous, their time recorded apart as JAX's are.
  c.checkpoint.async_save = True

  # Options of the PyTorch twin (framework=torch); the JAX run ignores them.
  c.torch = ml_collections.ConfigDict()
  # torch.compile the model (its first steps' warm-up is recorded apart as compile_s), else eager.
  c.torch.compile = False
  # AdamW's fused kernel where the device has one (CUDA, ROCm, CPU), else the foreach kernel.
  c.torch.fused_adamw = True
  # Parallelism under torchrun: auto (ddp for mesh.data > 1, fsdp for mesh.fsdp > 1), none (one
  # process), ddp (DistributedDataParallel), fsdp (FSDP2 fully_shard; mesh.data > 1 too: HSDP).
  # mesh.tensor > 1 adds tensor parallelism (DTensor, twin/parallelize.py) beneath either; ddp
  # over data is then FSDP2's replicate.
  c.torch.parallel = "auto"
  # Initial weights: jax (the very weights the JAX run of the same seed starts from, made by JAX
  # on the CPU and converted) or torch (the same distributions drawn by torch: for models too big
  # to initialize on the host's CPU).
  c.torch.init = "jax"
  # torch.set_float32_matmul_precision on GPUs: high lets float32 matmuls run as TF32, as XLA
  # does by default on NVIDIA GPUs (the float32 peak in the MFU table assumes it); highest does not.
  c.torch.float32_matmul_precision = "high"

  c.mesh = ml_collections.ConfigDict()
  # Device mesh axes; the product must equal the device count. One axis may be -1: the rest.
  # Data parallelism: replicas, each with its share of the batch.
  c.mesh.data = -1
  # Parameters, gradients and optimizer state sharded over this many devices (FSDP / ZeRO-3).
  c.mesh.fsdp = 1
  # Tensor parallelism: heads, MLP and vocabulary split over this many devices.
  c.mesh.tensor = 1
  return c


# Which values a key takes, where it is one of a list (validate() checks them).
ALLOWED = {"framework": FRAMEWORKS, "family": FAMILIES, "dtype": DTYPES,
           "host_allocator": hostalloc.MODES, "model.attention": ATTENTIONS,
           "model.remat": REMAT_POLICIES, "model.impl": IMPLS, "model.position": POSITIONS,
           "model.norm": NORMS, "model.mlp": MLPS, "data.synthetic": SYNTHETIC,
           "torch.parallel": TORCH_PARALLEL, "torch.init": TORCH_INITS,
           "torch.float32_matmul_precision": TORCH_MATMUL_PRECISIONS}
# The groups of the top-level keys in `jaxbench train --help` (the rest: run).
_TOP_GROUPS = {"batch": ("batch_size", "microbatches", "seq_len", "dtype", "loss_chunk_size"),
               "measurement": ("warmup_steps_excluded", "peak_tflops", "log_every", "tensorboard",
                               "profile_steps", "dump_hlo")}
_ASSIGNMENT = re.compile(r"^\s*(c|m|o)((?:\.\w+)+) = (?!ml_collections)")


def key_docs() -> list[dict]:
  """Every config key with its default, the values it allows and its meaning: the comment above
  its line in base_config() (keys on consecutive lines share one), read from this file's source,
  so the help cannot drift from it. In group order."""
  import inspect
  prefixes = {"c": "", "m": "model.", "o": "optimizer."}
  defaults = base_config()
  docs, comment = [], []
  for line in inspect.getsource(base_config).splitlines():
    text = line.strip()
    if text.startswith("#"):
      comment = [] if comment is None else comment
      comment.append(text.lstrip("# ").strip())
      continue
    match = _ASSIGNMENT.match(line)
    if match:
      key = prefixes[match.group(1)] + match.group(2)[1:]
      top = key.split(".")[0]
      group = (top if "." in key else
               next((g for g, keys in _TOP_GROUPS.items() if key in keys), "run"))
      meaning = " ".join(comment) if comment else (docs[-1]["meaning"] if docs else "")
      docs.append({"key": key, "group": group, "default": _get(defaults, key),
                   "allowed": ALLOWED.get(key), "meaning": meaning})
    comment = None if match else []  # a blank or other line ends a shared comment
  order = ["run", "batch", "measurement", "model", "optimizer", "data", "eval", "checkpoint",
           "mesh", "torch"]
  return sorted(docs, key=lambda d: order.index(d["group"]) if d["group"] in order else len(order))


def first_sentence(text: str, width: int = 92) -> str:
  """A meaning's first sentence (not cut at "e.g."), at most `width` characters."""
  first = re.split(r"(?<!e\.g)(?<!i\.e)(?<![.\s])\.\s", text, maxsplit=1)[0].rstrip(".")
  return first if len(first) <= width else first[:width - 3].rstrip() + "..."


def format_key_docs(docs: list[dict], full: bool = False) -> str:
  """The keys by group: `--config.KEY=DEFAULT  [allowed]` and the first sentence of the meaning
  (`full`: all of it, wrapped)."""
  import textwrap
  lines, group = [], None
  for d in docs:
    if d["group"] != group:
      group = d["group"]
      lines.append(f"\n{group}:")
    allowed = f"  [{' | '.join(map(str, d['allowed']))}]" if d["allowed"] else ""
    lines.append(f"  --config.{d['key']}={d['default']!r}{allowed}")
    meaning = d["meaning"] or "(undocumented)"
    lines += (textwrap.wrap(meaning, 96, initial_indent="      ", subsequent_indent="      ")
              if full else ["      " + first_sentence(meaning)])
  return "\n".join(lines).lstrip("\n")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py[:preset]` the way `--config` does; ConfigError('--config') naming the file and
  the fault when it is not a config file (not Python, a syntax or import error, no get_config, a
  get_config that raises or returns something else, an empty preset)."""
  from jaxbench.errors import first_line
  path, sep, arg = spec.partition(":")
  path = resolve_config_path(path)
  module_spec = importlib.util.spec_from_file_location("jaxbench_config_file", path)
  if module_spec is None or not path.endswith(".py"):
    raise ConfigError("--config", f"{path} is not a Python file: a config file is a .py file "
                                  "defining get_config() (see configs/mpt.py)")
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # whatever the file's own code raises: the file is at fault, not jaxbench
    raise ConfigError("--config", f"cannot load {path}: {type(e).__name__}: {first_line(e)}") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError("--config", f"{path} defines no get_config(); a config file defines "
                                  "get_config(preset) returning an ml_collections.ConfigDict "
                                  "(see configs/mpt.py)")
  if sep and not arg:  # "file.py:" is a typo, not the default preset
    get_config("")  # a shipped file names its presets here (ConfigError)
    raise ConfigError("--config", f"{spec!r} names no preset after ':'")
  try:
    c = get_config(arg) if arg else get_config()
  except ConfigError:
    raise
  except Exception as e:
    raise ConfigError("--config", f"{path}: get_config({arg!r}) raised {type(e).__name__}: "
                                  f"{first_line(e)}") from None
  if not isinstance(c, ml_collections.ConfigDict):
    raise ConfigError("--config", f"{path}: get_config({arg!r}) returned a {type(c).__name__}, not "
                                  "an ml_collections.ConfigDict (start from base_config())")
  return c


def load_with_overrides(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """A config file + preset with {"key.sub": value} overrides set (for tests and benchmarks; the
  command line goes through parse_flags)."""
  c = load_config_file(spec)
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def resolve_config_path(path: str) -> str:
  """A config path as given, else the same name among the configs shipped with the package,
  so `--config=configs/mpt.py:125m` works from any directory."""
  if os.path.exists(path):
    return path
  for prefix in ("configs/", "./configs/"):
    if path.startswith(prefix):
      candidate = os.path.join(CONFIG_DIR, path[len(prefix):])
      if os.path.exists(candidate):
        return candidate
  return path


def unknown_preset(family: str, preset: str, presets) -> ConfigError:
  return ConfigError("preset", f"unknown {family} preset {preset!r}; allowed: {', '.join(presets)}")


def check_choice(c, key: str, allowed) -> None:
  """ConfigError naming `key` when its value is not one of `allowed`."""
  value = _get(c, key)
  if value not in allowed:
    raise ConfigError(key, f"{value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _positive(c, key: str) -> None:
  value = _get(c, key)
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(key, f"{value!r} must be a positive integer")


def _get(c, key: str):
  node = c
  for part in key.split("."):
    node = node[part]
  return node


def mesh_shape(c, n_devices: int) -> dict[str, int]:
  """The mesh axis sizes for `n_devices`, filling the one -1 axis; ConfigError if impossible."""
  sizes = {a: int(c.mesh[a]) for a in MESH_AXES}
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ConfigError(f"mesh.{axis}", f"{size} must be a positive integer or -1 (the rest)")
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise ConfigError(f"mesh.{fill[1]}", f"only one mesh axis may be -1, got {', '.join(fill)}")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if n_devices % known:
      raise ConfigError(f"mesh.{fill[0]}",
                        f"cannot fill: {n_devices} devices are not divisible by the other axes' "
                        f"product {known}")
    sizes[fill[0]] = n_devices // known
  product = math.prod(sizes.values())
  if product != n_devices:
    shape = " x ".join(f"{a}={s}" for a, s in sizes.items())
    raise ConfigError("mesh", f"{shape} = {product} devices, but there are {n_devices}; "
                              "the product must equal the device count (one axis may be -1)")
  return sizes


def profile_steps(c, start_step: int = 0) -> tuple[int, int] | None:
  """`profile_steps` as (first, last) step, or None when off or, for a run resumed after
  `start_step`, when the window began before (its steps ran, traced or not, before the restart);
  ConfigError when malformed."""
  text = str(c.profile_steps).strip()
  if not text:
    return None
  first, sep, last = text.partition(":")
  try:
    first, last = int(first), int(last) if sep else None
  except ValueError:
    first = last = None
  if first is None or last is None or not 1 <= first <= last <= c.steps:
    raise ConfigError("profile_steps", f"{c.profile_steps!r} must be START:END with "
                                       f"1 <= START <= END <= steps={c.steps} (e.g. 5:7), "
                                       "or empty (off)")
  return (first, last) if first > start_step else None


def validate(c, n_devices: int) -> dict[str, int]:
  """Checks everything that can be checked without compiling; returns the mesh shape."""
  check_choice(c, "framework", FRAMEWORKS)
  check_choice(c, "family", FAMILIES)
  check_choice(c, "dtype", DTYPES)
  check_choice(c, "host_allocator", hostalloc.MODES)
  for key in ("steps", "batch_size", "microbatches", "seq_len", "model.n_layers", "model.d_model",
              "model.n_heads", "model.n_kv_heads", "model.d_ff", "model.vocab_size",
              "model.max_seq_len"):
    _positive(c, key)
  if not isinstance(c.warmup_steps_excluded, int) or c.warmup_steps_excluded < 0:
    raise ConfigError("warmup_steps_excluded", f"{c.warmup_steps_excluded!r} must be an integer >= 0")
  if c.warmup_steps_excluded >= c.steps:
    raise ConfigError("warmup_steps_excluded",
                      f"{c.warmup_steps_excluded} leaves no timed step out of steps={c.steps}; "
                      f"allowed: 0 .. {c.steps - 1}")
  if c.log_every < 0:
    raise ConfigError("log_every", f"{c.log_every} must be >= 0")
  if not math.isfinite(c.peak_tflops) or c.peak_tflops < 0:
    raise ConfigError("peak_tflops", f"{c.peak_tflops} must be a finite number >= 0 "
                                     "(0 = table or measured peak)")
  if not isinstance(c.seed, int) or c.seed < 0:
    raise ConfigError("seed", f"{c.seed!r} must be an integer >= 0")
  if c.tensorboard and importlib.util.find_spec("tensorboardX") is None:
    raise ConfigError("tensorboard", "True needs tensorboardX, which is not installed: "
                                     "pip install 'jaxbench[tensorboard]'")
  profile_steps(c)
  if not isinstance(c.loss_chunk_size, int) or c.loss_chunk_size < 0:
    raise ConfigError("loss_chunk_size", f"{c.loss_chunk_size!r} must be an integer >= 0 "
                                         "(0: the whole sequence at once)")
  for key in ("dump_hlo", "memory_check"):
    if not isinstance(c[key], bool):
      raise ConfigError(key, f"{c[key]!r} must be True or False")

  m = c.model
  check_choice(c, "model.attention", ATTENTIONS)
  if (not isinstance(m.attention_block, int) or isinstance(m.attention_block, bool)
      or m.attention_block < 0):
    raise ConfigError("model.attention_block", f"{m.attention_block!r} must be an integer >= 0 "
                                               "(0: chosen from seq_len)")
  check_choice(c, "model.remat", REMAT_POLICIES)
  check_choice(c, "model.impl", IMPLS)
  check_choice(c, "model.position", POSITIONS)
  check_choice(c, "model.norm", NORMS)
  check_choice(c, "model.mlp", MLPS)
  if m.d_model % m.n_heads:
    raise ConfigError("model.n_heads", f"{m.n_heads} does not divide model.d_model={m.d_model}; "
                                       f"allowed: divisors of {m.d_model}")
  if m.n_heads % m.n_kv_heads:
    raise ConfigError("model.n_kv_heads", f"{m.n_kv_heads} does not divide model.n_heads={m.n_heads}; "
                                          f"allowed: divisors of {m.n_heads}")
  head_dim = m.d_model // m.n_heads
  if m.position == "rope" and head_dim % 2:
    raise ConfigError("model.position", f"rope needs an even head dim, got {head_dim}")
  if c.seq_len > m.max_seq_len:
    raise ConfigError("seq_len", f"{c.seq_len} exceeds model.max_seq_len={m.max_seq_len}; "
                                 f"allowed: 1 .. {m.max_seq_len}")
  for key in ("init_std", "norm_eps", "rope_theta"):
    if not math.isfinite(m[key]) or m[key] <= 0:
      raise ConfigError(f"model.{key}", f"{m[key]} must be a finite number > 0")

  if c.batch_size % c.microbatches:
    raise ConfigError("microbatches", f"{c.microbatches} does not divide batch_size={c.batch_size}; "
                                      f"allowed: divisors of {c.batch_size}")

  o = c.optimizer
  for key in ("lr", "min_lr_ratio", "b1", "b2", "eps", "weight_decay", "clip_norm"):
    if not math.isfinite(o[key]):
      raise ConfigError(f"optimizer.{key}", f"{o[key]} must be a finite number")
  if o.lr <= 0:
    raise ConfigError("optimizer.lr", f"{o.lr} must be > 0")
  if not 0 <= o.warmup_steps:
    raise ConfigError("optimizer.warmup_steps", f"{o.warmup_steps} must be >= 0")
  if not 0 <= o.min_lr_ratio <= 1:
    raise ConfigError("optimizer.min_lr_ratio", f"{o.min_lr_ratio} must be in [0, 1]")
  for key in ("b1", "b2"):
    if not 0 <= o[key] < 1:
      raise ConfigError(f"optimizer.{key}", f"{o[key]} must be in [0, 1)")
  if o.weight_decay < 0 or o.clip_norm < 0 or o.eps <= 0:
    raise ConfigError("optimizer", "weight_decay and clip_norm must be >= 0, eps > 0")

  check_choice(c, "torch.parallel", TORCH_PARALLEL)
  check_choice(c, "torch.init", TORCH_INITS)
  check_choice(c, "torch.float32_matmul_precision", TORCH_MATMUL_PRECISIONS)

  check_choice(c, "data.synthetic", SYNTHETIC)
  if not 1 <= c.data.markov_branching <= m.vocab_size:
    raise ConfigError("data.markov_branching",
                      f"{c.data.markov_branching} must be in 1 .. model.vocab_size={m.vocab_size}")

  if not isinstance(c.eval.every, int) or c.eval.every < 0:
    raise ConfigError("eval.every", f"{c.eval.every!r} must be an integer >= 0 (0: never)")
  _positive(c, "eval.batches")
  if not isinstance(c.checkpoint.every, int) or c.checkpoint.every < 0:
    raise ConfigError("checkpoint.every", f"{c.checkpoint.every!r} must be an integer >= 0 (0: off)")
  _positive(c, "checkpoint.keep")

  shape = mesh_shape(c, n_devices)
  batch_shards = shape["data"] * shape["fsdp"]
  if c.batch_size % (batch_shards * c.microbatches):
    raise ConfigError("batch_size",
                      f"{c.batch_size} is not divisible by mesh.data*mesh.fsdp*microbatches = "
                      f"{shape['data']}*{shape['fsdp']}*{c.microbatches} = "
                      f"{batch_shards * c.microbatches}")
  if m.d_model % shape["fsdp"]:
    raise ConfigError("model.d_model", f"{m.d_model} is not divisible by mesh.fsdp={shape['fsdp']}")
  tensor = shape["tensor"]
  split = (("model.n_heads", m.n_heads), ("model.n_kv_heads", m.n_kv_heads),
           ("model.d_ff", m.d_ff), ("model.vocab_size", m.vocab_size))
  for key, value in split:
    if value % tensor:
      common = math.gcd(*(v for _, v in split))
      allowed = [d for d in range(1, common + 1) if common % d == 0]
      raise ConfigError(key, f"{value} is not divisible by mesh.tensor={tensor}: tensor "
                             "parallelism splits heads, kv heads, MLP and vocab evenly over it "
                             f"(both frameworks); allowed mesh.tensor here: "
                             f"{', '.join(map(str, allowed))}")
  return shape


def _key_error_text(e: BaseException) -> str:
  """ml_collections' KeyError ("'stepz'\nDid you mean "steps" instead of "stepz"?") on one line,
  as its text and not its repr (a KeyError's str() quotes and escapes it)."""
  while e.args and isinstance(e.args[0], BaseException):  # an AttributeError around the KeyError
    e = e.args[0]
  text = str(e.args[0]) if e.args else str(e)
  first, *rest = text.strip().splitlines() or [type(e).__name__]
  hint = " ".join(" ".join(rest).split())
  return first + (f" ({hint[0].lower() + hint[1:]})" if hint else "")


def parse_flags(argv: list[str], define_extra=None):
  """absl flags with `--config=FILE[:PRESET]` and `--config.KEY=VALUE` overrides, for every command
  that trains or compiles the model. Returns (config, {name: value} of the extra flags that
  `define_extra(flag_values)` defines as {name: FlagHolder}). Every bad flag or value raises
  ConfigError (exit 2, one line).

  The flags live in a FlagValues of their own, defined per call: config_flags reads the overrides
  from the argv it is given, and a command's main() stays callable more than once."""
  from absl import flags
  from ml_collections import config_flags
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path, sep, preset = arg[len("--config="):].partition(":")
      resolved = resolve_config_path(path)
      if not os.path.isfile(resolved):
        shipped = ", ".join(sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py")))
        raise ConfigError("--config", f"no config file {path!r}; shipped: configs/{{{shipped}}}")
      argv[i] = "--config=" + resolved + sep + preset
      load_config_file(argv[i][len("--config="):])  # an unknown preset fails here, clearly
  fv = flags.FlagValues()
  try:
    config = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Config file and preset, e.g. configs/mpt.py:125m; override "
        "keys with --config.KEY=VALUE.", flag_values=fv, sys_argv=argv)
    holders = define_extra(fv) if define_extra else {}
    rest = fv(argv)
    c = config.value
    c.keys()  # a config file that failed to load raises here
  except ConfigError:
    raise
  except (KeyError, AttributeError) as e:
    raise ConfigError("--config", f"unknown config key {_key_error_text(e)}; the keys are in "
                                  "jaxbench/config.py") from None
  except (flags.Error, ValueError, TypeError, OSError, ImportError, SyntaxError) as e:
    cause = e.__cause__ or e
    text = str(cause).strip() or type(cause).__name__
    raise ConfigError("flags", " ".join(text.split())[:400]) from None
  if len(rest) > 1:
    raise ConfigError("flags", f"unexpected arguments {rest[1:]}")
  if c.data.path and not any(a.startswith("--config.model.vocab_size") for a in argv):
    from jaxbench import tokenfile
    c.model.vocab_size = int(tokenfile.read_meta(c.data.path)["vocab_size"])  # the data's own
  return c, {name: holder.value for name, holder in holders.items()}
