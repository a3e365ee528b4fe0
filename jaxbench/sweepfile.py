"""A sweep file -> its points: the file's checks, the axes' product and zipped groups, each
point's config args, environment, timeout and stable id. No process is started and nothing of
JAX is imported here. The file's format is described in jaxbench/sweep.py (`jaxbench sweep --help`).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re

from jaxbench import config as config_lib
from jaxbench.errors import BadInput, ConfigError

SWEEP_DIR = os.path.join(config_lib.CONFIG_DIR, "sweeps")
SWEEP_KEYS = ("base", "fixed", "axes", "zip", "timeout_s", "max_batch", "compile_only", "repeats")
DEFAULT_TIMEOUT_S = 3600.0
MAX_BATCH_DEFAULTS = {"steps": 3, "limit": 64, "timeout_s": None}
ENV_PREFIX = "env."


@dataclasses.dataclass
class Point:
  index: int
  overrides: dict  # key -> value, as the sweep file gives them (fixed, axes, zip)
  spec: str  # config file and preset
  config_args: list  # --config.KEY=VALUE
  env: dict  # NAME -> value (None: unset)
  timeout_s: float
  id: str = ""
  problem: str | None = None  # a bad value found without running: the point is bad_config


@dataclasses.dataclass
class Sweep:
  path: str
  base: str
  points: list
  max_batch: dict | None  # the search's options, None when off
  # {"target": ..., "topology": ... or None}: points are compiled for that GPU, not run
  compile_only: dict | None = None
  varying: list = dataclasses.field(default_factory=list)  # the axes' and zip groups' keys
  repeats: int = 1  # runs of each point, interleaved: every point once, then every point again


def load_sweep_file(path: str) -> dict:
  """The dict of the file's get_sweep(); `configs/sweeps/...` also finds the shipped ones."""
  path = config_lib.resolve_config_path(path)
  if not os.path.isfile(path):
    shipped = sorted(f for f in os.listdir(SWEEP_DIR) if f.endswith(".py"))
    raise BadInput(f"--sweep: no sweep file {path!r}; shipped: configs/sweeps/{{{','.join(shipped)}}}")
  spec = importlib.util.spec_from_file_location("jaxbench_sweep_file", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # the user's file: any error in it is bad input, reported in one line
    raise BadInput(f"--sweep: {path} failed to load: {type(e).__name__}: {e}") from None
  if not callable(getattr(module, "get_sweep", None)):
    raise BadInput(f"--sweep: {path} has no get_sweep() function returning the sweep dict")
  try:
    sweep = module.get_sweep()
  except Exception as e:
    raise BadInput(f"--sweep: {path}: get_sweep() failed: {type(e).__name__}: {e}") from None
  if not isinstance(sweep, dict):
    raise BadInput(f"--sweep: {path}: get_sweep() must return a dict, got {type(sweep).__name__}")
  return sweep


def _check_key(key, where: str) -> None:
  if not isinstance(key, str) or not key:
    raise BadInput(f"sweep {where}: keys must be non-empty strings, got {key!r}")
  if key.startswith(ENV_PREFIX) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key[len(ENV_PREFIX):]):
    raise BadInput(f"sweep {where}: {key!r} is not an environment variable name")


def _values(key: str, values, where: str) -> list:
  if not isinstance(values, (list, tuple)) or not values:
    raise BadInput(f"sweep {where}[{key!r}]: must be a non-empty list of values, got {values!r}")
  return list(values)


def expand(sweep: dict) -> list[dict]:
  """The points' overrides: fixed, then the axes' product, then each zip group, in file order."""
  unknown = sorted(set(sweep) - set(SWEEP_KEYS))
  if unknown:
    raise BadInput(f"sweep file: unknown entry {unknown[0]!r}; allowed: {', '.join(SWEEP_KEYS)}")
  fixed = sweep.get("fixed") or {}
  axes = sweep.get("axes") or {}
  zips = sweep.get("zip") or []
  if not isinstance(fixed, dict) or not isinstance(axes, dict):
    raise BadInput("sweep file: 'fixed' and 'axes' must be dicts of key -> value(s)")
  if isinstance(zips, dict):
    zips = [zips]
  if not isinstance(zips, (list, tuple)) or not all(isinstance(z, dict) and z for z in zips):
    raise BadInput("sweep file: 'zip' must be a list of non-empty dicts of key -> [values]")
  seen = {}
  dims = []  # each: list of {key: value} choices
  for where, keys in (("fixed", fixed), ("axes", axes), *((f"zip[{i}]", z) for i, z in enumerate(zips))):
    for key in keys:
      _check_key(key, where)
      if key in seen:
        raise BadInput(f"sweep file: {key!r} is in both {seen[key]} and {where}; give it once")
      seen[key] = where
  for key, values in axes.items():
    dims.append([{key: v} for v in _values(key, values, "axes")])
  for i, group in enumerate(zips):
    lists = {k: _values(k, v, f"zip[{i}]") for k, v in group.items()}
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
      raise BadInput(f"sweep zip[{i}]: lists of different lengths "
                     f"({', '.join(f'{k}: {len(v)}' for k, v in lists.items())}); zipped lists "
                     "advance together and must be equally long")
    n = lengths.pop()
    dims.append([{k: v[j] for k, v in lists.items()} for j in range(n)])
  points = []
  for combo in itertools.product(*dims):
    point = dict(fixed)
    for part in combo:
      point.update(part)
    points.append(point)
  return points


def format_value(value) -> str:
  """A value as --config.KEY=VALUE text that ml_collections' flag parser reads back."""
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def get_path(c, key: str):
  node = c
  for part in key.split("."):
    node = node[part]
  return node


def _set_path(c, key: str, value) -> None:
  *parents, leaf = key.split(".")
  node = c
  for part in parents:
    node = node[part]
  node[leaf] = value


def point_id(overrides: dict, base: str, search: bool, varying=None, aot: dict | None = None) -> str:
  """A readable prefix (the `varying` keys' values) and a hash of everything that defines the
  point (not its timeout)."""
  payload = {"base": base, "overrides": {k: v for k, v in overrides.items() if k != "timeout_s"}}
  if search:
    payload["max_batch"] = True
  if aot:
    payload["compile_only"] = aot
  digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()[:8]
  parts = []
  for key, value in overrides.items():
    if key == "timeout_s" or (varying is not None and key not in varying):
      continue
    short = key.split(".")[-1]
    parts.append(f"{short}={value}" if not isinstance(value, str) or len(value) < 24 else short)
  slug = re.sub(r"[^A-Za-z0-9=.,_+-]+", "_", ",".join(parts)).strip("_")[:60]
  return f"{slug}-{digest}" if slug else digest


def resolve_point(index: int, overrides: dict, base: str, timeout_s: float, loaded: dict,
                  search: bool, varying=None, aot: dict | None = None) -> Point:
  """Checks one point's keys against its config file (BadInput: the sweep is wrong) and its values'
  types (Point.problem: this point is bad_config)."""
  spec = overrides.get("config", base)
  if not isinstance(spec, str):
    raise BadInput(f"sweep point {index}: 'config' must be a string like configs/mpt.py:125m")
  path, _, preset = spec.partition(":")
  if "preset" in overrides:
    preset = str(overrides["preset"])
  resolved = config_lib.resolve_config_path(path)
  if not os.path.isfile(resolved):
    raise BadInput(f"sweep: no config file {path!r} (point {index})")
  full = resolved + (":" + preset if preset else "")
  point = Point(index=index, overrides=overrides, spec=full, config_args=[], env={},
                timeout_s=timeout_s, id=point_id(overrides, base, search, varying, aot))
  if full not in loaded:
    try:
      loaded[full] = config_lib.load_config_file(full)
    except ConfigError as e:  # an unknown preset: a bad value of this point
      loaded[full] = e
    except Exception as e:
      raise BadInput(f"sweep: config {full} failed to load: {type(e).__name__}: {e}") from None
  c = loaded[full]
  if isinstance(c, ConfigError):
    point.problem = str(c)
    c = None
  else:
    c = copy.deepcopy(c)
  for key, value in overrides.items():
    if key.startswith(ENV_PREFIX):
      if value is not None and not isinstance(value, (str, int, float)):
        raise BadInput(f"sweep: {key}={value!r}: environment values are strings (None unsets)")
      point.env[key[len(ENV_PREFIX):]] = None if value is None else str(value)
      continue
    if key == "timeout_s":
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BadInput(f"sweep: timeout_s={value!r} must be a number of seconds > 0")
      point.timeout_s = float(value)
      continue
    if key in ("config", "preset"):
      continue
    if c is None:
      continue
    try:
      get_path(c, key)
    except (KeyError, AttributeError):
      raise BadInput(f"sweep: unknown config key {key!r} (point {index}, {full}); the keys are "
                     "in jaxbench/config.py, or use preset, config, timeout_s, env.NAME") from None
    try:
      _set_path(c, key, value)
    except (TypeError, ValueError) as e:
      point.problem = point.problem or f"{key}: {value!r} does not fit the key's type: {e}"
    point.config_args.append(f"--config.{key}={format_value(value)}")
  return point


def compile_only_options(value, target: str | None = None, topology: str | None = None,
                         where: str = "sweep file") -> dict | None:
  """The sweep file's `compile_only` (False, a target name or path, or {"target", "topology"}),
  with --compile_only / --topology from the command line taking precedence."""
  from jaxbench import compile as compile_lib  # no JAX at import: names and files only
  if isinstance(value, str):
    value = {"target": value}
  if value in (None, False):
    value = {}
  if not isinstance(value, dict):
    raise BadInput(f"{where}: compile_only must be False, a target ({', '.join(compile_lib.TARGETS)}, "
                   "PATH.txtpb) or "
                   f"{{'target': ..., 'topology': 'PxHxD'}}, got {value!r}")
  unknown = sorted(set(value) - {"target", "topology"})
  if unknown:
    raise BadInput(f"{where}: compile_only: unknown option {unknown[0]!r}; allowed: target, topology")
  options = {"target": target or value.get("target"), "topology": topology or value.get("topology")}
  if not options["target"]:
    if options["topology"]:
      raise BadInput("--topology needs a compile_only target (--compile_only=h100)")
    return None
  try:
    _, path = compile_lib.resolve_target_path(str(options["target"]))
  except ConfigError as e:
    raise BadInput(f"compile_only: {e}") from None
  if str(options["target"]).lower() in compile_lib.TARGETS:
    options["target"] = str(options["target"]).lower()
  else:  # a description file: the points run elsewhere (their own cwd), so an absolute path
    options["target"] = os.path.abspath(path)
  if options["topology"] and not re.fullmatch(r"\d+x\d+x\d+", str(options["topology"])):
    raise BadInput(f"compile_only: topology {options['topology']!r}: expected PARTITIONSxHOSTSxDEVICES")
  return options


def repeats_option(value, where: str = "sweep file") -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise BadInput(f"{where}: repeats={value!r} must be an integer >= 1 (runs of each point)")
  return value


def build(path: str, timeout_s: float | None = None, max_batch: bool = False,
          compile_only: str | None = None, topology: str | None = None,
          repeats: int | None = None) -> Sweep:
  sweep = load_sweep_file(path)
  aot = compile_only_options(sweep.get("compile_only"), compile_only, topology)
  repeats = (repeats_option(repeats, "--repeats") if repeats is not None
             else repeats_option(sweep.get("repeats", 1)))
  if aot and repeats > 1:
    raise BadInput("repeats > 1 with compile_only: a compile for a target gives the same figures "
                   "every time; give one")
  base = sweep.get("base")
  if not isinstance(base, str) or not base:
    raise BadInput(f"sweep file {path}: 'base' must name a config, e.g. 'configs/mpt.py:125m'")
  file_timeout = sweep.get("timeout_s", DEFAULT_TIMEOUT_S)
  if isinstance(file_timeout, bool) or not isinstance(file_timeout, (int, float)) or file_timeout <= 0:
    raise BadInput(f"sweep file {path}: timeout_s={file_timeout!r} must be a number of seconds > 0")
  timeout = float(timeout_s if timeout_s is not None else file_timeout)
  search = sweep.get("max_batch", False)
  if isinstance(search, dict):
    unknown = sorted(set(search) - set(MAX_BATCH_DEFAULTS))
    if unknown:
      raise BadInput(f"sweep file: max_batch: unknown option {unknown[0]!r}; allowed: "
                     f"{', '.join(MAX_BATCH_DEFAULTS)}")
    options = {**MAX_BATCH_DEFAULTS, **search}
  elif isinstance(search, bool):
    options = dict(MAX_BATCH_DEFAULTS) if search else None
  else:
    raise BadInput(f"sweep file: max_batch must be True, False or a dict, got {search!r}")
  if max_batch and options is None:
    options = dict(MAX_BATCH_DEFAULTS)
  if options is not None:
    for key in ("steps", "limit"):
      if isinstance(options[key], bool) or not isinstance(options[key], int) or options[key] < 2:
        raise BadInput(f"sweep file: max_batch {key}={options[key]!r} must be an integer >= 2")
  loaded = {}
  varying = set(sweep.get("axes") or {})
  for group in ([sweep["zip"]] if isinstance(sweep.get("zip"), dict) else sweep.get("zip") or []):
    varying |= set(group) if isinstance(group, dict) else set()
  points = [resolve_point(i, o, base, timeout, loaded, options is not None, varying, aot)
            for i, o in enumerate(expand(sweep))]
  ids = collections.Counter(p.id for p in points)
  dup = [i for i, n in ids.items() if n > 1]
  if dup:
    raise BadInput(f"sweep file: two points are the same ({dup[0]}); remove the repeated value")
  return Sweep(path=path, base=base, points=points, max_batch=options,
               varying=[k for k in override_keys(points) if k in varying], compile_only=aot,
               repeats=repeats)


def override_keys(points: list[Point]) -> list[str]:
  keys = []
  for p in points:
    keys += [k for k in p.overrides if k not in keys]
  return keys
