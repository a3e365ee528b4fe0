"""AdamW with warmup + cosine decay and global-norm clipping (Optax)."""

from __future__ import annotations

import jax
import optax

# Parameter names that are never decayed (norm scales, biases), and the embeddings that are
# decayed only with optimizer.decay_embeddings.
_NO_DECAY = ("scale", "bias")
_EMBEDDINGS = ("embedding", "position_embedding")


def schedule(c) -> optax.Schedule:
  o = c.optimizer
  warmup = min(int(o.warmup_steps), max(c.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=warmup, decay_steps=max(c.steps, warmup + 1),
      end_value=o.lr * o.min_lr_ratio)


def decays(name: str, decay_embeddings: bool) -> bool:
  """Whether the parameter leaf called `name` is weight-decayed (the twin asks this too)."""
  if name in _NO_DECAY:
    return False
  if name in _EMBEDDINGS:
    return decay_embeddings
  return True


def decay_mask(params, decay_embeddings: bool):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decays(str(getattr(path[-1], "key", path[-1])), decay_embeddings), params)


def make_optimizer(c) -> optax.GradientTransformation:
  o = c.optimizer
  adamw = optax.adamw(schedule(c), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      mask=lambda params: decay_mask(params, o.decay_embeddings))
  if o.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)
  return adamw
