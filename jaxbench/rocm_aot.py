"""AMD targets for `jaxbench compile`: JAX's real ROCm compiler on a machine with no AMD GPU.

The ROCm PJRT plugin (`jax-rocm7-plugin` + `jax-rocm7-pjrt`, the `rocm-aot` extra) holds XLA's
whole AMDGPU compiler (LLVM's AMDGPU backend, the device bitcode, lld), but its shared objects
also link the ROCm runtime libraries (libamdhip64, librccl, libhipblaslt, libMIOpen, ...), which
a machine without ROCm does not have, so the plugin does not load. Compiling needs none of them:
with a *link-only stand-in* for each missing library (a shared object with the same name that
defines the symbols the plugin takes from it, with their symbol versions, each a function that
returns an error) the plugin loads, and creating a topology and compiling calls nothing in them
but the plugin's own load-time registrations (`__hipRegisterFatBinary`, `__hipRegisterFunction`,
`__hipRegisterVar`, `rocprofiler_force_configure`). Every call into a stand-in is traced and
reported.

So that a stand-in can never stand between JAX and a real AMD GPU:
- where ROCm is installed (every library resolves), the real libraries are used and nothing is
  built; where an AMD GPU is visible (/dev/kfd, or JAX's own count) and libraries are missing,
  this refuses instead of standing in;
- the stand-ins are loaded only by a child process that compiles (their folder on its
  LD_LIBRARY_PATH, JAX kept on the CPU); no other jaxbench process ever loads them;
- each stand-in set is built once per plugin version into the cache ($JAXBENCH_CACHE_DIR or
  ~/.cache/jaxbench, `rocm-standins/`) with the C compiler ($CC or cc) and readelf (binutils).

The plugin also refuses to start where JAX counts no AMD GPU; the child answers JAX's count with 1
(PRIVATE_APIS). The compiled code objects are read back (XLA's code object cache, kept in the
child's own folder) and their ELF header checked against the requested gfx architecture: a step
that was not compiled for that AMD GPU is never reported as one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile

from jaxbench.errors import ConfigError, first_line

EXTRA = 'the `rocm-aot` extra: pip install -e ".[rocm-aot]"'
# The plugin's two distributions, and the packages they install.
DISTRIBUTIONS = {"jax-rocm7-plugin": "jax_rocm7_plugin", "jax-rocm7-pjrt": "jax_plugins.xla_rocm7"}
# JAX internals this module relies on, named here and nowhere else (tests/test_rocm_aot.py checks
# each still exists with the behaviour used). Ran with jax 0.10.2.
PRIVATE_APIS = {
    # How the ROCm plugin's initialize() decides whether to start: the AMD GPUs the kernel driver
    # shows. jax_plugins/xla_rocm7/__init__.py calls it as hardware_utils.num_available_amd_gpus.
    "amd_gpu_count": "jax._src.hardware_utils.num_available_amd_gpus",
}
# Set in the compiling child's environment: the libraries it was given (JSON).
CHILD_ENV = "JAXBENCH_ROCM_AOT_CHILD"
TRACE_ENV = "JAXBENCH_STANDIN_TRACE"
PARENT_ENV = "JAXBENCH_ROCM_AOT_PARENT"  # the compiling child's parent's pid
# The stand-in calls the plugin makes when it loads (registering its own kernels with the HIP
# runtime, configuring its profiler): expected, and without effect on what the compiler builds.
LOAD_TIME_CALLS = frozenset({"__hipRegisterFatBinary", "__hipRegisterFunction", "__hipRegisterVar",
                             "__hipUnregisterFatBinary", "rocprofiler_force_configure"})
# Bumped whenever the stand-ins' source changes, so cached ones are rebuilt.
BUILDER_VERSION = 2

# ELF e_flags' EF_AMDGPU_MACH values (LLVM's llvm/BinaryFormat/ELF.h, amd_hsa_elf.h): the
# architectures whose code objects can be checked, so the only ones `jaxbench compile` accepts (an
# architecture LLVM does not know aborts the compiler). EM_AMDGPU is the ELF machine.
EM_AMDGPU = 224
GFX_MACH = {"gfx908": 0x30, "gfx90a": 0x3F, "gfx940": 0x40, "gfx941": 0x4B, "gfx942": 0x4C,
            "gfx950": 0x4F, "gfx1010": 0x33, "gfx1030": 0x36, "gfx1100": 0x41, "gfx1150": 0x43,
            "gfx1200": 0x48, "gfx1201": 0x4E}
# Code object v4+ feature bits: xnack (0x300) and sramecc (0xc00): unsupported, any, off, on; a
# target id (gfx90a:sramecc+:xnack-) writes the last two as + and -, and leaves the others out.
_FEATURE = {"xnack": (0x300, 8), "sramecc": (0xC00, 10)}
_SETTING = {0: None, 1: None, 2: "-", 3: "+"}


# --- the plugin and its libraries --------------------------------------------------------------

def installed_versions() -> dict[str, str | None]:
  """The versions of the plugin's distributions and of jaxlib (None where not installed)."""
  out = {}
  for dist in (*DISTRIBUTIONS, "jaxlib"):
    try:
      out[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      out[dist] = None
  return out


def version_problem(versions: dict[str, str | None]) -> str | None:
  """Why these versions cannot compile, or None. JAX itself does not check a ROCm plugin's version
  (jaxlib/plugin_support.py leaves it to pip), and a plugin built for another jaxlib fails in ways
  that do not name the cause."""
  missing = [d for d in DISTRIBUTIONS if not versions.get(d)]
  if missing:
    return (f"AMD targets need the ROCm PJRT plugin ({', '.join(missing)} not installed): "
            f"{EXTRA}")
  jaxlib = versions.get("jaxlib")
  wrong = [f"{d} {versions[d]}" for d in DISTRIBUTIONS if versions[d] != jaxlib]
  if wrong:
    return (f"the ROCm plugin ({', '.join(wrong)}) does not match jaxlib {jaxlib}: "
            f'pip install "jax-rocm7-plugin=={jaxlib}" "jax-rocm7-pjrt=={jaxlib}"')
  return None


def plugin_binaries() -> list[str]:
  """The plugin's shared objects: the PJRT plugin and the extension modules JAX imports from it."""
  paths = []
  for package in DISTRIBUTIONS.values():
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
      paths += sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".so"))
  return paths


def _tool(name: str, env_var: str | None = None) -> str | None:
  """The path of `name` (or of the program $env_var names, e.g. CC="gcc -m64"), None if absent."""
  command = (os.environ.get(env_var) if env_var else None) or name
  words = shlex.split(command)
  return shutil.which(words[0]) if words else None


def _run(args: list[str], env: dict | None = None) -> str:
  return subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout


def needed(binary: str) -> list[str]:
  """The sonames `binary` names as NEEDED, in order."""
  dynamic = _run(["readelf", "-d", "-W", binary])
  return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)


def resolve(binary: str, env: dict | None = None) -> dict[str, str | None]:
  """{soname: path, or None where not found} of `binary`'s dependencies (ldd: the loader's own
  search, LD_LIBRARY_PATH and RUNPATH included)."""
  out = {}
  for line in _run(["ldd", binary], env=env).splitlines():
    m = re.match(r"\s*(\S+) => (not found|(\S+))", line)
    if m:
      out[m.group(1)] = m.group(3)
  return out


def version_files(readelf_v: str) -> dict[str, str]:
  """{symbol version: the library it is required from}, from `readelf -V`'s .gnu.version_r."""
  out, current = {}, None
  _, _, needs = readelf_v.partition(".gnu.version_r")
  for line in needs.splitlines():
    m = re.search(r"File: (\S+)", line)
    if m:
      current = m.group(1)
      continue
    m = re.search(r"Name: (\S+)", line)
    if m and current:
      out[m.group(1)] = current
  return out


def undefined_symbols(readelf_syms: str) -> list[tuple[str, str | None]]:
  """(name, version or None) of each strong undefined symbol in `readelf --dyn-syms -W` output.
  Weak ones are left out: the loader leaves them null when nothing defines them."""
  out = []
  for line in readelf_syms.splitlines():
    f = line.split()
    if len(f) < 8 or f[6] != "UND" or f[4] != "GLOBAL":
      continue
    name, _, version = f[7].partition("@")
    out.append((name, re.sub(r"\s*\(\d+\)$", "", version.lstrip("@")) or None))
  return out


def defined_symbols(readelf_syms: str) -> set[str]:
  out = set()
  for line in readelf_syms.splitlines():
    f = line.split()
    if len(f) >= 8 and f[6] != "UND" and f[4] in ("GLOBAL", "WEAK"):
      out.add(f[7].split("@")[0])
  return out


# Where the ELF does not say which library an unversioned symbol comes from: by name, as the ROCm
# libraries name their APIs. The loader does not care which stand-in defines it, only the reader.
_PREFIXES = (("rocprofiler_", "librocprofiler-sdk"), ("nccl", "librccl"),
             ("hipblasLt", "libhipblaslt"), ("_ZN13hipblaslt_ext", "libhipblaslt"),
             ("_ZNK13hipblaslt_ext", "libhipblaslt"),
             ("hipfft", "libhipfft"), ("hipsolver", "libhipsolver"), ("hipsparse", "libhipsparse"),
             ("hipblas", "libhipblas"), ("rocsolver", "librocsolver"), ("rocblas", "librocblas"),
             ("rsmi_", "librocm_smi64"), ("amdsmi_", "libamd_smi"), ("miopen", "libMIOpen"),
             ("hip", "libamdhip64"), ("__hip", "libamdhip64"), ("hsa_", "libhsa-runtime64"))


def _library_for(symbol: str, candidates: list[str]) -> str:
  """Which of `candidates` (missing libraries the binary names itself) gets an unversioned symbol:
  by its name where one matches, else the first (any of them is in the binary's own scope)."""
  for prefix, stem in _PREFIXES:
    if symbol.startswith(prefix):
      for soname in candidates:
        if soname.startswith(stem + ".so"):
          return soname
  return candidates[0]


Requirements = dict[str, dict[str | None, set[str]]]  # {soname: {symbol version or None: names}}


def requirements(binaries: list[str]) -> Requirements:
  """For every library one of `binaries` needs and the loader cannot find, the symbols it must
  define. Unversioned symbols that a library that is here defines (libstdc++'s typeinfo), or this
  interpreter does (an extension module's Py* calls), are not stood in for: a stand-in earlier in
  the search order would shadow them."""
  import ctypes
  interpreter = ctypes.CDLL(None)
  symbols: dict[str, dict[str | None, set[str]]] = collections.defaultdict(
      lambda: collections.defaultdict(set))
  defined_cache: dict[str, set[str]] = {}
  for binary in binaries:
    resolved = resolve(binary)
    direct = needed(binary)
    missing = [s for s, p in resolved.items() if p is None]  # what ldd says it cannot find
    if not missing:
      continue
    files = version_files(_run(["readelf", "-V", "-W", binary]))
    here: set[str] = set()
    for soname in direct:
      path = resolved.get(soname)
      if path:
        if path not in defined_cache:
          defined_cache[path] = defined_symbols(_run(["readelf", "--dyn-syms", "-W", path]))
        here |= defined_cache[path]
    direct_missing = [s for s in direct if s in missing] or missing
    for name, version in undefined_symbols(_run(["readelf", "--dyn-syms", "-W", binary])):
      if version:
        soname = files.get(version)
        if soname in missing:
          symbols[soname][version].add(name)
      elif name not in here and not hasattr(interpreter, name):
        symbols[_library_for(name, direct_missing)][None].add(name)
    for soname in missing:
      symbols.setdefault(soname, collections.defaultdict(set))
  # A symbol wanted both with a version and without is defined once, with its version.
  for by_version in symbols.values():
    versioned = set().union(*(names for v, names in by_version.items() if v))
    if None in by_version:
      by_version[None] -= versioned
  return {s: dict(v) for s, v in symbols.items()}


def standin_source(soname: str, by_version: dict[str | None, set[str]]) -> tuple[str, str | None]:
  """(C source, linker version script or None) of the stand-in for `soname`. Each symbol is a
  function that counts its calls and returns the address of a message: non-zero, so an error
  status to a caller expecting one, and a readable string to one expecting an error text. When the
  process exits, the counts are appended to the file $JAXBENCH_STANDIN_TRACE names (if it does)."""
  ordered = [(version, sorted(by_version[version]))
             for version in sorted(by_version, key=lambda v: (v is not None, v or ""))]
  names = [name for _, group in ordered for name in group]
  lines = ["#include <stdio.h>", "#include <stdlib.h>",
           f'static const char message[] = "jaxbench link-only stand-in for {soname}: '
           'no ROCm runtime in this process";',
           f"static const char *names[{max(len(names), 1)}] = {{"
           + ", ".join(f'"{n}"' for n in names) + "};",
           f"static unsigned long calls[{max(len(names), 1)}];",
           "static const char *called(int i) {",
           "  __atomic_fetch_add(&calls[i], 1, __ATOMIC_RELAXED);",
           "  return message;",
           "}",
           "__attribute__((destructor)) static void write_calls(void) {",
           f'  const char *path = getenv("{TRACE_ENV}");',
           "  FILE *f = path ? fopen(path, \"a\") : NULL;",
           "  if (!f) return;",
           f"  for (int i = 0; i < {len(names)}; i++)",
           f'    if (calls[i]) fprintf(f, "{soname} %s %lu\\n", names[i], calls[i]);',
           "  fclose(f);",
           "}"]
  for i, name in enumerate(names):
    lines.append(f'const char *s{i}(void) __asm__("{name}");')
    lines.append(f"const char *s{i}(void) {{ return called({i}); }}")
  nodes = [f"{version} {{ global: {'; '.join(group)}; }};" for version, group in ordered
           if version and group]
  return "\n".join(lines) + "\n", ("\n".join(nodes) + "\n") if nodes else None


# --- building and caching the stand-ins ----------------------------------------------------------

def cache_root() -> str:
  return os.path.join(os.environ.get("JAXBENCH_CACHE_DIR")
                      or os.path.join(os.path.expanduser("~"), ".cache", "jaxbench"),
                      "rocm-standins")


def _cache_key(versions: dict, binaries: list[str]) -> str:
  """The plugin's version, and the size and time of each of its binaries (a reinstall of the same
  version with other files is another key)."""
  facts = [BUILDER_VERSION, versions.get("jax-rocm7-plugin"), versions.get("jax-rocm7-pjrt")]
  for path in binaries:
    st = os.stat(path)
    facts.append((os.path.basename(path), st.st_size, int(st.st_mtime)))
  digest = hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:12]
  return f"{versions.get('jax-rocm7-plugin')}-{digest}"


def toolchain_problem() -> str | None:
  missing = [what for what, ok in (("a C compiler ($CC or cc)", _tool("cc", "CC")),
                                   ("readelf and ldd", _tool("readelf") and _tool("ldd")))
             if not ok]
  if missing:
    return (f"building the ROCm plugin's link-only stand-in libraries needs "
            f"{' and '.join(missing)}, not found: install gcc and binutils (e.g. apt-get install "
            "gcc binutils), or ROCm itself")
  return None


def build_standins(req: Requirements, folder: str) -> dict:
  """Compiles one stand-in per library into `folder` (made whole or not at all) and checks that
  every binary then resolves; returns the manifest written beside them."""
  tmp = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(folder))
  try:
    cc = [_tool("cc", "CC"), *shlex.split(os.environ.get("CC") or "cc")[1:]]
    built = {}
    for soname, by_version in sorted(req.items()):
      source, script = standin_source(soname, by_version)
      c_path = os.path.join(tmp, soname + ".c")
      with open(c_path, "w") as f:
        f.write(source)
      args = [*cc, "-shared", "-fPIC", "-O1", "-o", os.path.join(tmp, soname), c_path,
              f"-Wl,-soname,{soname}"]
      if script:
        with open(os.path.join(tmp, soname + ".map"), "w") as f:
          f.write(script)
        args.append(f"-Wl,--version-script={os.path.join(tmp, soname + '.map')}")
      proc = subprocess.run(args, capture_output=True, text=True)
      if proc.returncode:
        raise ConfigError("--target", f"the C compiler failed on the stand-in for {soname}: "
                                      f"{first_line(RuntimeError(proc.stderr))}")
      built[soname] = {"symbols": sum(len(v) for v in by_version.values()),
                       "versions": sorted(v for v in by_version if v)}
    manifest = {"builder_version": BUILDER_VERSION, "standins": built}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump(manifest, f, indent=2)
    try:
      os.rename(tmp, folder)
    except OSError:  # another process built the same set meanwhile: theirs is as good
      shutil.rmtree(tmp, ignore_errors=True)
    return manifest
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def unresolved(binaries: list[str], folder: str | None) -> list[str]:
  """What the loader still cannot resolve for `binaries` with `folder` first on its path
  (`ldd -r`: missing libraries, undefined symbols, missing symbol versions)."""
  env = dict(os.environ)
  if folder:
    env["LD_LIBRARY_PATH"] = folder + (os.pathsep + env["LD_LIBRARY_PATH"]
                                       if env.get("LD_LIBRARY_PATH") else "")
  import ctypes
  interpreter = ctypes.CDLL(None)  # extension modules take the Py* symbols from it when imported
  problems = []
  for binary in binaries:
    proc = subprocess.run(["ldd", "-r", binary], capture_output=True, text=True, env=env)
    for line in (proc.stdout + proc.stderr).splitlines():
      symbol = re.match(r"\s*undefined symbol: (\S+)", line)
      if symbol and hasattr(interpreter, symbol.group(1)):
        continue
      if "not found" in line or symbol:
        problems.append(f"{os.path.basename(binary)}: {line.split('(')[0].strip()}")
  return problems


def amd_gpu_visible() -> bool:
  """Whether this process could reach an AMD GPU: the kernel driver's device, or JAX's count."""
  if os.path.exists("/dev/kfd"):
    return True
  try:
    return private_api("amd_gpu_count")(stop_at=1) > 0
  except Exception:  # an API that moved is reported where it is needed (start_deviceless)
    return False


@dataclasses.dataclass
class Libraries:
  """What the compiling child loads: the plugin versions, the real ROCm libraries found, and the
  stand-ins (their folder and names) where libraries are missing."""
  versions: dict
  real: dict[str, str]
  standins: list[str]
  folder: str | None
  built_now: bool = False

  def summary(self) -> dict:
    return {"plugin": {d: self.versions.get(d) for d in DISTRIBUTIONS},
            "jaxlib": self.versions.get("jaxlib"),
            "libraries": ("link-only stand-ins" if self.standins and not self.real_rocm()
                          else "ROCm's own" if not self.standins
                          else "ROCm's own, with link-only stand-ins for the missing ones"),
            "real_rocm_libraries": self.real_rocm(), "standins": self.standins,
            "standin_folder": self.folder, "standins_built_now": self.built_now}

  def real_rocm(self) -> dict[str, str]:
    system = ("libc.", "libm.", "libdl.", "librt.", "libpthread.", "libstdc++.", "libgcc_s.",
              "ld-linux")
    return {s: p for s, p in self.real.items() if not s.startswith(system)}


def prepare(warn=None) -> Libraries:
  """Checks the plugin and the toolchain, and returns the libraries a compile will load, building
  (once per plugin version) the stand-ins for any ROCm library that is not here. ConfigError
  (exit 2, one line naming the fix) for whatever would stop it."""
  versions = installed_versions()
  problem = version_problem(versions)
  if problem:
    raise ConfigError("--target", problem)
  binaries = plugin_binaries()
  if not binaries:
    raise ConfigError("--target", f"the ROCm plugin's shared objects are missing: reinstall "
                                  f"{EXTRA}")
  if not (_tool("readelf") and _tool("ldd")):
    raise ConfigError("--target", toolchain_problem())
  first = resolve(binaries[0])
  if all(first.values()) and not unresolved(binaries, None):  # ROCm is installed
    return Libraries(versions, {s: p for s, p in first.items() if p}, [], None)
  if amd_gpu_visible():
    missing = sorted(s for s, p in first.items() if p is None)
    raise ConfigError("--target", "this machine has an AMD GPU but the ROCm libraries the plugin "
                      f"links are missing ({', '.join(missing) or 'undefined symbols'}): install "
                      "ROCm 7 (https://rocm.docs.amd.com); jaxbench stands in for them only where "
                      "no AMD GPU could be reached")
  folder = os.path.join(cache_root(), _cache_key(versions, binaries))
  built_now = False
  if not os.path.isfile(os.path.join(folder, "manifest.json")):
    problem = toolchain_problem()
    if problem:
      raise ConfigError("--target", problem)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    build_standins(requirements(binaries), folder)
    built_now = True
    left = unresolved(binaries, folder)
    if left:
      shutil.rmtree(folder, ignore_errors=True)
      raise RuntimeError("the stand-ins did not satisfy the loader: " + "; ".join(left[:5]))
  with open(os.path.join(folder, "manifest.json")) as f:
    standins = sorted(json.load(f)["standins"])
  if warn and built_now:
    warn(f"built link-only stand-ins for {len(standins)} ROCm libraries in {folder} (once per "
         "plugin version)")
  real = {s: p for s, p in first.items() if p}
  return Libraries(versions, real, standins, folder, built_now)


# --- the compiling child -------------------------------------------------------------------------

def private_api(key: str):
  """The JAX internal PRIVATE_APIS[key] names."""
  module, _, attr = PRIVATE_APIS[key].rpartition(".")
  return getattr(importlib.import_module(module), attr)


def in_child() -> bool:
  return CHILD_ENV in os.environ


def child_libraries() -> dict:
  return json.loads(os.environ.get(CHILD_ENV) or "{}")


def child_env(libs: Libraries, folder: str) -> dict:
  """The environment of the child that compiles: the stand-ins first on its loader path, JAX on
  the CPU, XLA's temporary files and code objects in `folder`, calls into stand-ins traced."""
  env = dict(os.environ)
  if libs.folder:
    env["LD_LIBRARY_PATH"] = libs.folder + (os.pathsep + env["LD_LIBRARY_PATH"]
                                            if env.get("LD_LIBRARY_PATH") else "")
    env[TRACE_ENV] = os.path.join(folder, "standin_calls.txt")
  env.update({"JAX_PLATFORMS": "cpu", "TMPDIR": folder,
              "TF_XLA_HSACO_CACHE_DIR": os.path.join(folder, "code_objects"),
              # every module's code object is written there, however small
              "TF_XLA_HSACO_BITCODE_SIZE_THRESHOLD": "0",
              CHILD_ENV: json.dumps(libs.summary()), PARENT_ENV: str(os.getpid())})
  os.makedirs(env["TF_XLA_HSACO_CACHE_DIR"], exist_ok=True)
  return env


def _die_with_parent() -> None:
  """The kernel ends this child when its parent dies (kill -9 included): no compile outlives the
  command that asked for it. (Set here, not in a preexec_fn: the parent runs JAX's threads.)"""
  import ctypes
  import signal
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if str(os.getppid()) != os.environ.get(PARENT_ENV, str(os.getppid())):  # it died before that
    os._exit(1)


def start_deviceless() -> None:
  """In the child, before JAX starts its backends: let the ROCm plugin start with no GPU. Where a
  GPU is visible nothing is changed; with stand-ins loaded that cannot happen (prepare refused)."""
  _die_with_parent()
  try:
    count = private_api("amd_gpu_count")
  except (ImportError, AttributeError):
    import jax
    raise ConfigError("--target", f"jax {jax.__version__} has no {PRIVATE_APIS['amd_gpu_count']}, "
                      "which jaxbench needs to start the ROCm plugin without a GPU: use jax "
                      "0.10-0.11 (setup.cfg's range)") from None
  if count(stop_at=1) > 0:
    if child_libraries().get("standins"):
      raise RuntimeError("an AMD GPU is visible to a process holding ROCm stand-ins: refusing")
    return
  module, _, attr = PRIVATE_APIS["amd_gpu_count"].rpartition(".")

  def one_described_gpu(stop_at=None):
    return 1

  setattr(importlib.import_module(module), attr, one_described_gpu)


def gcn_arch(target_text: str) -> tuple[str, dict[str, str]]:
  """(architecture, {feature: '+' or '-'}) of a description's gcn_arch_name, e.g. gfx90a and
  {'sramecc': '+', 'xnack': '-'} for "gfx90a:sramecc+:xnack-"."""
  m = re.search(r'gcn_arch_name\s*:\s*"([^"]*)"', target_text)
  if not m:
    raise ConfigError("--target", "an AMD description needs rocm_compute_capability "
                                  '{ gcn_arch_name: "gfx..." }')
  arch, *features = m.group(1).split(":")
  return arch, {f[:-1]: f[-1] for f in features if f[-1:] in "+-" and len(f) > 1}


def arch_problem(arch: str) -> str | None:
  if arch not in GFX_MACH:
    return (f"unknown AMD GPU architecture {arch!r} in gcn_arch_name: known "
            f"{', '.join(GFX_MACH)} (gfx942 MI300X/MI325X, gfx90a MI250X/MI250/MI210); fix the "
            "description's rocm_compute_capability")
  return None


def read_code_object(data: bytes) -> dict | None:
  """The target of an AMDGPU code object from its ELF header, or None if `data` is not one."""
  if len(data) < 52 or data[:4] != b"\x7fELF":
    return None
  machine = struct.unpack_from("<H", data, 18)[0]
  flags = struct.unpack_from("<I", data, 48)[0]
  names = {v: k for k, v in GFX_MACH.items()}
  features = {}
  for feature, (mask, shift) in _FEATURE.items():
    setting = _SETTING[(flags & mask) >> shift]
    if setting:
      features[feature] = setting
  return {"machine": machine, "amdgpu": machine == EM_AMDGPU,
          "arch": names.get(flags & 0xFF, f"mach 0x{flags & 0xFF:x}"), "features": features}


def _target_text(info: dict) -> str:
  return info["arch"] + "".join(f":{k}{v}" for k, v in sorted(info["features"].items()))


def code_object_check(folder: str | None, arch: str, features: dict[str, str]) -> dict:
  """What the compiler wrote to `folder`: how many code objects, for which target; `ok` only when
  there is at least one and every one is an AMDGPU object for `arch` that runs with the requested
  `features`: set as requested, or left to "any" (jax 0.11's plugin writes gfx942 objects so, for
  a gfx942:sramecc+:xnack- description; they run either way)."""
  found = collections.Counter()
  ok = True
  for name in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []:
    with open(os.path.join(folder, name), "rb") as f:
      info = read_code_object(f.read(64))
    if info is None or not info["amdgpu"]:
      found["not an AMDGPU code object" if info is None else f"ELF machine {info['machine']}"] += 1
      ok = False
      continue
    found[_target_text(info)] += 1
    ok = ok and info["arch"] == arch and all(info["features"].get(k) in (None, v)
                                             for k, v in features.items())
  return {"ok": ok and bool(found), "requested": _target_text({"arch": arch, "features": features}),
          "found": dict(found), "count": sum(found.values())}


def findings(target_text: str) -> dict:
  """In the child, after compiling: the libraries it was given and the code objects the compiler
  wrote (the calls into the stand-ins are counted as it exits: compile_in_child adds them)."""
  arch, features = gcn_arch(target_text)
  folder = os.environ.get("TF_XLA_HSACO_CACHE_DIR")
  return {**child_libraries(), "code_objects": code_object_check(folder, arch, features)}


def standin_calls(path: str | None) -> dict[str, int]:
  """{"library symbol": calls} from the trace the stand-ins wrote as the child exited."""
  calls = collections.Counter()
  if path and os.path.exists(path):
    with open(path) as f:
      for line in f:
        soname, symbol, count = line.split()
        calls[f"{soname} {symbol}"] += int(count)
  return dict(sorted(calls.items()))


def compile_in_child(argv: list[str], target_path: str, warn, dump: str | None = None,
                     timeout_s: float | None = None) -> dict:
  """`jaxbench compile` for one AMD target in a child process that may load the stand-ins; returns
  its report with the libraries it loaded. The child's bad input is this process's (ConfigError)."""
  libs = prepare(warn)
  folder = tempfile.mkdtemp(prefix="jaxbench-rocm-")
  try:
    report_path = os.path.join(folder, "report.json")
    cmd = [sys.executable, "-m", "jaxbench.compile", *child_argv(argv), f"--target={target_path}",
           f"--report={report_path}", "--suggest=False"] + (
               [f"--dump={os.path.abspath(dump)}"] if dump else [])
    proc = subprocess.run(cmd, env=child_env(libs, folder), capture_output=True, text=True,
                          timeout=timeout_s)
    for line in proc.stderr.splitlines():
      if line.startswith("warning:"):
        warn(line)
    if proc.returncode == 2:
      lines = [l for l in proc.stderr.strip().splitlines() if "bad input:" in l]
      raise ConfigError(lines[-1].split("bad input:", 1)[1].strip() if lines
                        else first_line(RuntimeError(proc.stderr)))
    from jaxbench import compile as compile_lib  # (it imports this module: here, not above)
    if (proc.returncode not in compile_lib.VERDICT_EXIT.values()
        or not os.path.exists(report_path)):
      raise RuntimeError(f"the compiling process for {os.path.basename(target_path)} failed "
                         f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(report_path) as f:
      report = json.load(f)
    if libs.standins and report.get("rocm") is not None:
      calls = standin_calls(os.path.join(folder, "standin_calls.txt"))
      report["rocm"]["standin_calls"] = calls
      # Only the plugin's load-time registrations are expected; anything else is said.
      report["rocm"]["unexpected_standin_calls"] = {k: v for k, v in calls.items()
                                                    if k.split()[-1] not in LOAD_TIME_CALLS}
    return report
  finally:
    shutil.rmtree(folder, ignore_errors=True)


# Flags of `jaxbench compile` that the parent decides for each child.
_PARENT_FLAGS = ("target", "report", "dump", "json", "nojson", "suggest", "nosuggest")
_PARENT_BOOLS = ("json", "nojson", "suggest", "nosuggest")


def child_argv(argv: list[str]) -> list[str]:
  """`argv` (program name first) without the flags the parent sets per child, in either spelling
  (`--flag=value` or `--flag value`)."""
  out, skip = [], False
  for arg in argv[1:]:
    if skip:
      skip = False
      continue
    name = arg.lstrip("-").split("=", 1)[0]
    if arg.startswith("-") and name in _PARENT_FLAGS:
      skip = "=" not in arg and name not in _PARENT_BOOLS
      continue
    out.append(arg)
  return out
