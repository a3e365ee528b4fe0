"""The train step: a pure function of (state, batch), jitted once, state donated.

One call is one optimizer step: gradients of `microbatches` microbatches are accumulated by a
scan inside the step, so the timed unit never depends on the accumulation setting.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxbench import model as model_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, rng, seq_len: int,
               unbox: bool = True) -> TrainState:
  """Params and optimizer state; with unbox=False the params keep their logical-axis boxes (for
  jax.eval_shape, to derive shardings without allocating anything)."""
  params = model_lib.init_params(model, rng, seq_len, unbox=unbox)
  opt_state = optimizer.init(nn.unbox(params))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def token_losses(logits, targets):
  """-log softmax(logits)[target] per position, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def cross_entropy(logits, targets):
  """Mean next-token cross-entropy in float32."""
  return token_losses(logits, targets).mean()


def chunked_cross_entropy(x, head, targets, chunk: int):
  """cross_entropy(model_lib.logits(x, head), targets), forming the logits `chunk` sequence
  positions at a time, so no more than [B, chunk, vocab] logits ever exist (the whole batch's
  would be B * S * vocab * 4 bytes in float32: 3.1 GiB for MPT's vocab at 8 x 2048).

  Under differentiation the gradients with respect to x and the output matrix are formed chunk by
  chunk in the same pass, from each chunk's softmax (d loss / d logits = (softmax - one_hot) / N),
  and only scaled in the backward pass: nothing is recomputed, so the chunking costs no FLOPs. The
  chunks run along the sequence so each keeps the batch's sharding."""
  return _chunked_ce(x, head, targets, chunk)


def _chunked_ce_pass(x, head, targets, chunk: int, with_grads: bool):
  b, s, d = x.shape
  n = -(-s // chunk)
  pad = n * chunk - s
  if pad:  # the padded positions count for nothing
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  valid = (jnp.arange(n * chunk) < s).reshape(n, 1, chunk)
  xs = x.reshape(b, n, chunk, d).swapaxes(0, 1)
  ts = targets.reshape(b, n, chunk).swapaxes(0, 1)
  tokens = b * s

  def one_chunk(carry, inputs):
    total, dhead = carry
    x_chunk, t_chunk, valid_chunk = inputs
    # One max and one sum of exponentials serve the loss and the softmax of its gradient: each
    # is a pass over the chunk's [B, chunk, vocab] logits (the widening to float32 fused in), and
    # the gradient is one more; optax's loss and jax.nn.softmax would each take their own.
    logits = model_lib.logits(x_chunk, head)
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    log_z = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    losses = (log_z - jnp.take_along_axis(shifted, t_chunk[..., None], axis=-1))[..., 0]
    total = total + jnp.sum(jnp.where(valid_chunk, losses, 0.0))
    if not with_grads:
      return (total, dhead), None
    dlogits = ((jnp.exp(shifted - log_z)
                - jax.nn.one_hot(t_chunk, logits.shape[-1], dtype=jnp.float32))
               * (valid_chunk[..., None] / tokens))
    dx, dhead_chunk = model_lib.head_matmul_grads(x_chunk, head, dlogits)
    return (total, dhead + dhead_chunk), dx.astype(x.dtype)

  dhead = jnp.zeros(head.shape, jnp.float32) if with_grads else jnp.zeros((), jnp.float32)
  (total, dhead), dxs = jax.lax.scan(one_chunk, (jnp.zeros((), jnp.float32), dhead), (xs, ts, valid))
  loss = total / tokens
  if not with_grads:
    return loss, None
  dx = dxs.swapaxes(0, 1).reshape(b, n * chunk, d)[:, :s]
  return loss, (dx, dhead.astype(head.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked_ce(x, head, targets, chunk):
  return _chunked_ce_pass(x, head, targets, chunk, with_grads=False)[0]


def _chunked_ce_fwd(x, head, targets, chunk):
  loss, grads = _chunked_ce_pass(x, head, targets, chunk, with_grads=True)
  return loss, grads


def _chunked_ce_bwd(chunk, grads, g):
  dx, dhead = grads
  return (g * dx).astype(dx.dtype), (g * dhead).astype(dhead.dtype), None


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def make_loss_fn(model: nn.Module, loss_chunk_size: int = 0):
  """(params, tokens [B, S + 1]) -> mean next-token loss; chunked when the sequence is longer than
  loss_chunk_size > 0 (otherwise the plain loss: a single chunk would only add a copy)."""

  def loss_fn(params, tokens):
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if 0 < loss_chunk_size < inputs.shape[1]:
      x, head = model.apply({"params": params}, inputs, return_hidden=True)
      return chunked_cross_entropy(x, head, targets, loss_chunk_size)
    return cross_entropy(model.apply({"params": params}, inputs), targets)

  return loss_fn


def _global_norm(tree):
  tree_lib = getattr(optax, "tree", None)  # optax >= 0.2.4 moved it; global_norm is deprecated
  return tree_lib.norm(tree) if tree_lib is not None and hasattr(tree_lib, "norm") else optax.global_norm(tree)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, lr_schedule,
                    loss_chunk_size: int = 0):
  grad_fn = jax.value_and_grad(make_loss_fn(model, loss_chunk_size))

  def train_step(state: TrainState, batch: jax.Array):
    """batch: int32 [microbatches, batch // microbatches, seq_len + 1]."""
    n_micro = batch.shape[0]
    if n_micro == 1:
      loss, grads = grad_fn(state.params, batch[0])
    else:
      def accumulate(carry, tokens):
        loss, grads = grad_fn(state.params, tokens)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None
      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(accumulate, zeros, batch)
      # Equal-sized microbatches: the mean of their means is the mean over the whole batch.
      loss, grads = jax.tree.map(lambda x: x / n_micro, (loss, grads))
    grad_norm = _global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module, loss_chunk_size: int = 0):
  """Mean loss over a batch shaped like a training batch, with the given params."""
  loss_fn = make_loss_fn(model, loss_chunk_size)

  def eval_step(params, batch):
    def one(carry, tokens):
      return carry + loss_fn(params, tokens), None
    total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), batch)
    return total / batch.shape[0]

  return eval_step
