"""JAX parameters <-> the twin's state dict, both ways, as numpy arrays (no torch needed here).

The JAX tree is model.Transformer's params, unrolled (layers_0 .. layers_{n-1}) or scan-stacked
(`layers`, stacked on axis 0); the torch names are twin/model.py's. One table says which leaf
goes where and how it is reshaped:
  Dense kernels [in, out] (DenseGeneral: [d, H, D] and [H, D, d])  <->  Linear weights [out, in]
  norm `scale` / `bias`                                             <->  `weight` / `bias`
  embedding [V, d], position_embedding [S, d]                       <->  Embedding weights
  lm_head [d, V]                                                     <->  lm_head.weight [V, d]
"""

from __future__ import annotations

import numpy as np

from jaxbench.model import ModelConfig

_NORMS = ("attention_norm", "mlp_norm")
_ATTENTION = ("query", "key", "value", "out")


def _layer_leaves(cfg: ModelConfig):
  """(path inside a layer, torch suffix) for every leaf of one block."""
  for name in _NORMS:
    yield (name, "scale"), f"{name}.weight"
    if cfg.norm == "layernorm" and cfg.bias:
      yield (name, "bias"), f"{name}.bias"
  dense = [("attention", n) for n in _ATTENTION]
  dense += [("mlp", n) for n in (("gate", "up", "down") if cfg.mlp == "swiglu" else ("up", "down"))]
  for module, name in dense:
    yield (module, name, "kernel"), f"{module}.{name}.weight"
    if cfg.bias:
      yield (module, name, "bias"), f"{module}.{name}.bias"


def _top_leaves(cfg: ModelConfig):
  yield ("embedding",), "embedding.weight"
  if cfg.position == "learned":
    yield ("position_embedding",), "position_embedding.weight"
  yield ("final_norm", "scale"), "final_norm.weight"
  if cfg.norm == "layernorm" and cfg.bias:
    yield ("final_norm", "bias"), "final_norm.bias"
  if not cfg.tie_embeddings:
    yield ("lm_head",), "lm_head.weight"


def _to_torch(path: tuple, x: np.ndarray) -> np.ndarray:
  """A JAX leaf in torch's layout."""
  if path[-1] == "kernel" or path == ("lm_head",):
    if x.ndim == 3 and path[-2] == "out":  # [H, D, d] -> [d, H*D]
      return x.reshape(-1, x.shape[-1]).T
    return x.reshape(x.shape[0], -1).T  # [d, H, D] -> [H*D, d]; [in, out] -> [out, in]
  if path[-1] == "bias":
    return x.reshape(-1)
  return x


def _to_jax(path: tuple, x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """A torch tensor (as numpy) in the JAX leaf's layout."""
  hd = cfg.head_dim
  heads = {"query": cfg.n_heads, "key": cfg.n_kv_heads, "value": cfg.n_kv_heads}
  if path == ("lm_head",):
    return x.T
  if path[-1] == "kernel":
    kernel = x.T
    if path[-2] == "out":
      return kernel.reshape(cfg.n_heads, hd, cfg.d_model)
    if path[-2] in heads:
      return kernel.reshape(cfg.d_model, heads[path[-2]], hd)
    return kernel
  if path[-1] == "bias" and path[-2] in heads:
    return x.reshape(heads[path[-2]], hd)
  return x


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def jax_to_torch(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """JAX params (unrolled or scan-stacked, any array type) -> {torch name: float32 numpy array}."""
  stacked = "layers" in params
  out = {}
  for path, name in _top_leaves(cfg):
    out[name] = _to_torch(path, np.asarray(_get(params, path), np.float32))
  for i in range(cfg.n_layers):
    layer = params["layers"] if stacked else params[f"layers_{i}"]
    for path, suffix in _layer_leaves(cfg):
      x = np.asarray(_get(layer, path), np.float32)
      out[f"layers.{i}.{suffix}"] = np.ascontiguousarray(_to_torch(path, x[i] if stacked else x))
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def torch_to_jax(state: dict, cfg: ModelConfig, stacked: bool | None = None) -> dict:
  """{torch name: array} (torch tensors must be .cpu().numpy()-able) -> JAX params as numpy,
  scan-stacked when `stacked` (default: cfg.scan_layers)."""
  stacked = cfg.scan_layers if stacked is None else stacked
  arrays = {k: _numpy(v) for k, v in state.items()}
  params: dict = {}
  for path, name in _top_leaves(cfg):
    _set(params, path, _to_jax(path, arrays[name], cfg))
  layers = []
  for i in range(cfg.n_layers):
    layer: dict = {}
    for path, suffix in _layer_leaves(cfg):
      _set(layer, path, _to_jax(path, arrays[f"layers.{i}.{suffix}"], cfg))
    layers.append(layer)
  if stacked:
    params["layers"] = _stack(layers)
  else:
    params.update({f"layers_{i}": layer for i, layer in enumerate(layers)})
  return params


def _stack(layers: list[dict]) -> dict:
  return {k: _stack([l[k] for l in layers]) if isinstance(layers[0][k], dict)
          else np.stack([l[k] for l in layers]) for k in layers[0]}


def _numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):
    x = x.detach().float().cpu().numpy()
  return np.asarray(x, np.float32)


def jax_name(torch_name: str) -> str:
  """The JAX leaf name behind a torch parameter name (for the weight-decay mask)."""
  leaf = torch_name.rsplit(".", 1)[-1]
  if torch_name.startswith(("embedding.", "position_embedding.", "lm_head.")):
    return torch_name.split(".")[0]
  if "norm" in torch_name:
    return "scale" if leaf == "weight" else "bias"
  return "kernel" if leaf == "weight" else "bias"
