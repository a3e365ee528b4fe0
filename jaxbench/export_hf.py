"""`jaxbench export-hf`: a run's latest checkpoint as a Hugging Face model folder.

  jaxbench export-hf --workdir=RUN_DIR --out=DIR

Writes DIR/model.safetensors and DIR/config.json that transformers loads with no custom code:
- LlamaForCausalLM for RMSNorm + rotary (half-split, as Hugging Face's) + SwiGLU models (the llama
  family; grouped-query attention, biases and tied embeddings map onto LlamaConfig's options);
- GPT2LMHeadModel for LayerNorm + learned positions + GELU + tied embeddings + multi-head
  attention (the MPT family's default): GPT-2's Conv1D weights are [in, out], its LayerNorms and
  linear layers always have biases (zeros are written where the model has none), and
  activation_function="gelu" is the exact GELU the model uses (GPT-2's default is the tanh one).
Anything else (ALiBi, RMSNorm with learned positions, GQA in an MPT, untied MPT embeddings, ...)
is refused with exit 2 before anything is read. Needs safetensors (the `torch` extra has it), not
torch or transformers. JAX runs on the CPU here.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from jaxbench import cli
from jaxbench import rundir as rundir_lib
from jaxbench.errors import ConfigError, bad_input, first_line


def architecture(config: dict) -> str:
  """'llama' or 'gpt2': the transformers class that computes this model; ConfigError if none."""
  m = config["model"]
  if m["norm"] == "rmsnorm" and m["position"] == "rope" and m["mlp"] == "swiglu":
    return "llama"
  if m["norm"] == "layernorm" and m["position"] == "learned" and m["mlp"] == "gelu":
    problems = []
    if not m["tie_embeddings"]:
      problems.append("untied embeddings (GPT2LMHeadModel ties them)")
    if m["n_kv_heads"] != m["n_heads"]:
      problems.append(f"grouped-query attention (n_kv_heads={m['n_kv_heads']} of "
                      f"n_heads={m['n_heads']}; GPT-2 has none)")
    if not problems:
      return "gpt2"
    raise ConfigError("model", "no transformers class computes this model: " + "; ".join(problems))
  raise ConfigError("model", f"no transformers class computes norm={m['norm']}, "
                             f"position={m['position']}, mlp={m['mlp']}; exportable: rmsnorm+rope+"
                             "swiglu (LlamaForCausalLM) or layernorm+learned+gelu with tied "
                             "embeddings (GPT2LMHeadModel)")


def llama_files(config: dict, state: dict[str, np.ndarray]) -> tuple[dict, dict]:
  """(config.json, tensors) for LlamaForCausalLM from the twin's state dict (torch layout)."""
  m = config["model"]
  names = {"attention_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
           "attention.query": "self_attn.q_proj", "attention.key": "self_attn.k_proj",
           "attention.value": "self_attn.v_proj", "attention.out": "self_attn.o_proj",
           "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj", "mlp.down": "mlp.down_proj"}
  tensors = {}
  for name, x in state.items():
    if name == "embedding.weight":
      tensors["model.embed_tokens.weight"] = x
    elif name == "final_norm.weight":
      tensors["model.norm.weight"] = x
    elif name == "lm_head.weight":
      tensors["lm_head.weight"] = x
    else:
      _, i, rest = name.split(".", 2)
      module, leaf = rest.rsplit(".", 1)
      tensors[f"model.layers.{i}.{names[module]}.{leaf}"] = x
  head_dim = m["d_model"] // m["n_heads"]
  hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": m["vocab_size"], "hidden_size": m["d_model"],
        "intermediate_size": m["d_ff"], "num_hidden_layers": m["n_layers"],
        "num_attention_heads": m["n_heads"], "num_key_value_heads": m["n_kv_heads"],
        "head_dim": head_dim, "max_position_embeddings": m["max_seq_len"],
        "rms_norm_eps": m["norm_eps"], "hidden_act": "silu",
        # transformers 4.x reads rope_theta, 5.x rope_parameters.
        "rope_theta": m["rope_theta"],
        "rope_parameters": {"rope_type": "default", "rope_theta": m["rope_theta"]},
        "attention_bias": bool(m["bias"]), "mlp_bias": bool(m["bias"]),
        "tie_word_embeddings": bool(m["tie_embeddings"]), "initializer_range": m["init_std"],
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "use_cache": True,
        "torch_dtype": "float32", "dtype": "float32"}
  return hf, tensors


def gpt2_files(config: dict, state: dict[str, np.ndarray]) -> tuple[dict, dict]:
  """(config.json, tensors) for GPT2LMHeadModel: Conv1D weights [in, out], zero biases where the
  model has none, query/key/value fused into c_attn."""
  m = config["model"]
  d, f = m["d_model"], m["d_ff"]
  zeros = lambda n: np.zeros((n,), np.float32)  # noqa: E731
  get_bias = lambda name, n: state.get(name, zeros(n))  # noqa: E731
  tensors = {"transformer.wte.weight": state["embedding.weight"],
             "transformer.wpe.weight": state["position_embedding.weight"],
             "transformer.ln_f.weight": state["final_norm.weight"],
             "transformer.ln_f.bias": get_bias("final_norm.bias", d)}
  for i in range(m["n_layers"]):
    p, h = f"layers.{i}.", f"transformer.h.{i}."
    for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
      tensors[h + theirs + ".weight"] = state[p + ours + ".weight"]
      tensors[h + theirs + ".bias"] = get_bias(p + ours + ".bias", d)
    qkv = ("query", "key", "value")
    tensors[h + "attn.c_attn.weight"] = np.concatenate(
        [state[p + f"attention.{n}.weight"].T for n in qkv], axis=1)
    tensors[h + "attn.c_attn.bias"] = np.concatenate(
        [get_bias(p + f"attention.{n}.bias", d) for n in qkv])
    tensors[h + "attn.c_proj.weight"] = state[p + "attention.out.weight"].T
    tensors[h + "attn.c_proj.bias"] = get_bias(p + "attention.out.bias", d)
    tensors[h + "mlp.c_fc.weight"] = state[p + "mlp.up.weight"].T
    tensors[h + "mlp.c_fc.bias"] = get_bias(p + "mlp.up.bias", f)
    tensors[h + "mlp.c_proj.weight"] = state[p + "mlp.down.weight"].T
    tensors[h + "mlp.c_proj.bias"] = get_bias(p + "mlp.down.bias", d)
  hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": m["vocab_size"], "n_positions": m["max_seq_len"], "n_embd": d,
        "n_layer": m["n_layers"], "n_head": m["n_heads"], "n_inner": f,
        "activation_function": "gelu", "layer_norm_epsilon": m["norm_eps"],
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
        "initializer_range": m["init_std"], "bos_token_id": None, "eos_token_id": None,
        "use_cache": True, "torch_dtype": "float32", "dtype": "float32"}
  return hf, tensors


def load_params(workdir: str, step: int | None = None):
  """(config dict, ModelConfig, params as numpy, step) of the run's latest (or given) checkpoint,
  restored on one CPU device whatever mesh saved it."""
  from jaxbench.twin import train as twin_train  # noqa: F401 (only for its JAX-on-CPU helper)
  jax = twin_train.cpu_only_jax()
  import ml_collections
  from jaxbench import checkpoint as checkpoint_lib
  from jaxbench import program
  info = rundir_lib.read_json(os.path.join(workdir, "run.json"))
  c = ml_collections.ConfigDict(info["config"])
  c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
  c.model.attention = "xla"
  setup = program.build(c, devices=jax.devices("cpu")[:1])
  checkpointer = checkpoint_lib.Checkpointer(workdir, every=0, keep=c.checkpoint.keep,
                                             async_save=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    state, _ = checkpointer.restore(step, program.abstract_state(setup))
  finally:
    checkpointer.close()
  return info["config"], setup.model_cfg, jax.device_get(state.params), step


def load_twin_state(workdir: str, step: int | None = None):
  """(ModelConfig, parameters by the twin's names as numpy, step) of a PyTorch twin run's latest
  (or given) checkpoint (twin/checkpoint.py), read in this one process whatever parallelism saved
  it."""
  from jaxbench.twin import train as twin_train
  twin_train.cpu_only_jax()
  import ml_collections
  import torch
  import torch.distributed.checkpoint as dcp
  from jaxbench import model as model_lib
  from jaxbench.twin import checkpoint as twin_checkpoint
  from jaxbench.twin import model as twin_model
  info = rundir_lib.read_json(os.path.join(workdir, "run.json"))
  cfg = model_lib.ModelConfig.from_config(ml_collections.ConfigDict(info["config"]), "xla")
  with torch.device("cpu"):
    state = twin_model.Transformer(cfg).state_dict()
  checkpointer = twin_checkpoint.TwinCheckpointer(workdir, every=0, keep=0, rank=0, world=1)
  step = checkpointer.latest_step() if step is None else step
  try:
    dcp.load({"model": state}, checkpoint_id=os.path.join(checkpointer.directory, str(step)),
             no_dist=True)
  except Exception as e:  # corrupt, truncated or foreign files
    raise ConfigError("--workdir", f"cannot read the checkpoint of step {step} in "
                                   f"{checkpointer.directory}: {first_line(e)}") from None
  return cfg, {k: v.detach().float().numpy() for k, v in state.items()}, step


def export(workdir: str, out: str, overwrite: bool = False) -> dict:
  """Writes the Hugging Face folder; returns what was written. ConfigError on bad input, before
  anything is read: `out` must be a writable folder holding nothing yet, unless `overwrite`."""
  rundir_lib.check_output_folder(out, "--out", replace=overwrite)
  run_json = os.path.join(workdir, "run.json")
  if not os.path.isfile(run_json):
    raise ConfigError("--workdir", f"{workdir} is not a run directory (no run.json)")
  config = rundir_lib.read_json(run_json)["config"]
  arch = architecture(config)  # refused before anything is read
  if not rundir_lib.has_checkpoint(workdir):
    raise ConfigError("--workdir", f"{workdir} has no checkpoint to export; train with "
                                   "--config.checkpoint.every=N (the last step is always saved)")
  try:
    from safetensors.numpy import save_file
  except ImportError:
    raise ConfigError("export-hf", 'needs safetensors: pip install -e ".[torch]" (the `torch` '
                                   "extra)") from None
  if config.get("framework") == "torch":
    cfg, state, step = load_twin_state(workdir)
  else:
    from jaxbench.twin import convert
    _, cfg, params, step = load_params(workdir)
    state = convert.jax_to_torch(params, cfg)
  hf, tensors = (llama_files if arch == "llama" else gpt2_files)(config, state)
  hf["jaxbench"] = {"run_dir": os.path.abspath(workdir), "checkpoint_step": int(step),
                    "family": config["family"], "preset": config["preset"]}
  os.makedirs(out, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
            os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
  rundir_lib.write_json(os.path.join(out, "config.json"), hf)
  return {"architecture": hf["architectures"][0], "step": int(step), "tensors": len(tensors),
          "out": os.path.abspath(out)}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  parser = cli.FlagParser(prog="jaxbench export-hf", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a run directory with checkpoints")
  parser.add_argument("--out", required=True, help="the Hugging Face model folder to write")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace model.safetensors and config.json in an --out that holds files")
  try:
    args = parser.parse_args(argv[1:])
    result = export(args.workdir, args.out, overwrite=args.overwrite)
  except ConfigError as e:
    return bad_input("jaxbench export-hf", e)
  print(f"wrote {result['architecture']} (checkpoint of step {result['step']}, "
        f"{result['tensors']} tensors) to {result['out']}: model.safetensors, config.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
