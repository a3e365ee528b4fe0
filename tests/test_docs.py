"""The docs stay true without running anything: every `jaxbench ...`, `python -m jaxbench...` and
`./launch.sh ...` command line in README.md and docs/*.md (code blocks and inline code) names a
command that exists, flags that command defines and config keys that config.py documents; every
relative link points at a file that exists (and a heading, where it names one); every page of
docs/ is linked from the README; docs/configuration.md is what `python -m jaxbench.docs` writes.

A command's flags are read from its module's source (absl `DEFINE_*("name"` and argparse
`add_argument("--name"`), the commands from jaxbench/cli.py's table, launch.sh's options from its
`case` arms, so a new command or flag needs no change here. Seconds; no JAX step is compiled.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shlex

import pytest

from jaxbench import cli
from jaxbench import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
ALWAYS = {"help", "h", "helpfull"}  # every command answers these
SEPARATORS = {";", "|", "||", "&&", "&", "do", "done", "then", "fi", "(", ")"}
FENCE = re.compile(r"^ {0,3}(```|~~~)[^\n]*\n.*?^ {0,3}\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _rel(path: str) -> str:
  return os.path.relpath(path, REPO)


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def code_lines(text: str) -> list[str]:
  """The lines a reader might paste: each fenced block's lines (continuations joined, a leading
  `$ ` prompt dropped) and each inline code span of the prose."""
  lines = []
  for block in FENCE.finditer(text):
    body = block.group(0).split("\n", 1)[1].rsplit("\n", 1)[0]
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
      lines.append(re.sub(r"^\s*\$\s+", "", line))
  prose = FENCE.sub("", text)
  lines += [span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", prose)]
  return lines


def _tokens(line: str) -> list[str]:
  lexer = shlex.shlex(line, posix=True)
  lexer.whitespace_split = True
  lexer.commenters = "#"
  try:
    tokens = list(lexer)
  except ValueError:  # an unbalanced quote in a fragment of prose
    tokens = line.split()
  out = []
  for token in tokens:  # `torch;` -> `torch`, `;`
    if len(token) > 1 and token[-1] == ";":
      out += [token[:-1], ";"]
    else:
      out.append(token)
  return out


# Words after which the next token is a command: `time jaxbench ...`, `srun jaxbench ...`.
PREFIXES = {"-m", "time", "exec", "nohup", "srun", "sudo", "env", "$", "else"}


def _starts_command(before: list[str]) -> bool:
  """Whether a token after `before` stands where a shell reads a command name."""
  if not before:
    return True
  prev = before[-1]
  return (prev in SEPARATORS or prev in PREFIXES or prev.isdigit()  # `timeout 600 jaxbench`
          or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", prev) is not None)  # XLA_FLAGS=... jaxbench


def commands(line: str) -> list[tuple[str, list[str]]]:
  """(program, argv) for each command in a line: program is `jaxbench`, `launch.sh` or a module
  (`jaxbench.profiling`); argv runs to the next shell separator. Quoted arguments that hold a
  command (`--wrap "srun ./launch.sh ..."`) are searched too."""
  found, tokens = [], _tokens(line)
  for i, token in enumerate(tokens):
    if " " in token:
      found += commands(token)
      continue
    program = None
    if token == "jaxbench" and not _starts_command(tokens[:i]):
      continue  # an argument of another program: `ruff check jaxbench tests`
    if token == "jaxbench" or token.endswith("/bin/jaxbench"):
      program = "jaxbench"
    elif token.endswith("launch.sh") and (token.startswith("./") or "/" not in token):
      program = "launch.sh"
    elif token.startswith("jaxbench.") and i > 0 and tokens[i - 1] == "-m":
      program = token
    elif token == "jaxbench" and i > 0 and tokens[i - 1] == "-m":
      program = "jaxbench"
    if program is None:
      continue
    argv = []
    for arg in tokens[i + 1:]:
      if arg in SEPARATORS or " " in arg:
        break
      argv.append(arg)
    found.append((program, argv))
  return found


def _source(module: str) -> str:
  """The source of a module (all of a package's files), without importing it."""
  spec = importlib.util.find_spec(module)
  assert spec is not None and spec.origin, f"no module {module}"
  if spec.submodule_search_locations:
    paths = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "**", "*.py"),
                             recursive=True))
  else:
    paths = [spec.origin]
  return "\n".join(_read(p) for p in paths)


@functools.lru_cache(maxsize=None)
def module_flags(module: str) -> frozenset[str]:
  """The flags a command module defines: absl's (with `no` before a bool's name) and argparse's;
  `config` where it takes --config and --config.KEY."""
  source = _source(module)
  names = set(ALWAYS)
  for kind, name in re.findall(r"DEFINE_(\w+)\(\s*[\"'](\w+)[\"']", source):
    names.add(name)
    if kind in ("bool", "boolean"):
      names.add("no" + name)
  names.update(n.replace("-", "_") for n in re.findall(r"add_argument\(\s*[\"']--([\w-]+)", source))
  if "parse_flags(" in source or "DEFINE_config_file" in source:
    names.add("config")
  return frozenset(names)


def command_modules() -> dict[str, str]:
  """`jaxbench <name>` -> its module, from cli.COMMANDS (a module name or (module, text))."""
  return {name: value[0] if isinstance(value, (tuple, list)) else value
          for name, value in cli.COMMANDS.items()}


@functools.lru_cache(maxsize=None)
def launch_options() -> frozenset[str]:
  source = _read(os.path.join(REPO, "launch.sh"))
  return frozenset(re.findall(r"^\s*(?:-h \| )?--(\w+)(?:=\*)?\)", source, re.M)) | ALWAYS


@functools.lru_cache(maxsize=None)
def config_keys() -> frozenset[str]:
  return frozenset(d["key"] for d in config_lib.key_docs())


def _flag(arg: str) -> tuple[str, str | None] | None:
  """`--name=value` (placeholder brackets stripped) -> (name, value); None if not a flag."""
  arg = arg.strip("[]")
  if not arg.startswith("--") or arg == "--":
    return None
  name, sep, value = arg[2:].partition("=")
  name = name.split("[")[0]
  return name, (value if sep else None)


def check_jaxbench(argv: list[str]) -> list[str]:
  """What is wrong with `jaxbench ARGV` (empty when nothing is)."""
  if not argv or not re.fullmatch(r"[a-z][a-z0-9-]*", argv[0]):
    return []  # bare `jaxbench` (its usage), a flag, or a placeholder such as <command>
  name, args = argv[0], argv[1:]
  if name == "help":
    return []
  modules = command_modules()
  if name not in modules:
    return [f"unknown command {name!r} (jaxbench/cli.py has {', '.join(modules)})"]
  return check_flags(name, modules[name], args)


def check_flags(label: str, module: str, args: list[str]) -> list[str]:
  problems, allowed = [], module_flags(module)
  for arg in args:
    flag = _flag(arg)
    if flag is None:
      continue
    name, value = flag
    if name.startswith("config.") and "config" in allowed:
      key = name[len("config."):]
      if key == key.upper() or "*" in key:
        continue  # --config.KEY=VALUE, --config.torch.*: placeholders
      if key not in config_keys():
        problems.append(f"{label}: --{name}: no config key {key!r} in jaxbench/config.py")
    elif name not in allowed:
      problems.append(f"{label}: --{name}: not a flag of {label} (it has "
                      f"{', '.join(sorted(allowed - ALWAYS))})")
    elif name == "config" and value and re.search(r"\.py(:|$)", value) and "<" not in value:
      path = config_lib.resolve_config_path(value.partition(":")[0])
      if not os.path.isfile(path):
        problems.append(f"{label}: --config={value}: no such config file")
  return problems


def check_launch(argv: list[str]) -> list[str]:
  if "--" in argv:
    own, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  else:
    own, command = argv, []
  problems = []
  for arg in own:
    flag = _flag(arg)
    if flag and flag[0] not in launch_options():
      problems.append(f"launch.sh: --{flag[0]}: not an option of launch.sh (it has "
                      f"{', '.join(sorted(launch_options() - ALWAYS))})")
  return problems + check_jaxbench(command)


def check_line(line: str) -> list[str]:
  problems = []
  for program, argv in commands(line):
    if program == "jaxbench":
      problems += check_jaxbench(argv)
    elif program == "launch.sh":
      problems += check_launch(argv)
    elif importlib.util.find_spec(program) is None:
      problems.append(f"python -m {program}: no such module")
    else:
      problems += check_flags(f"python -m {program}", program, argv)
  return problems


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_every_command_in_the_docs_exists(path):
  problems = [f"`{line.strip()[:120]}`: {p}" for line in code_lines(_read(path))
              for p in check_line(line)]
  assert not problems, f"{_rel(path)}:\n" + "\n".join(problems)


def anchors(path: str) -> set[str]:
  """GitHub's anchors for a markdown file's headings (lowercased, punctuation dropped, spaces to
  hyphens, repeats numbered)."""
  seen, out = {}, set()
  for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", _read(path)), re.M):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_every_relative_link_resolves(path):
  problems = []
  for target in LINK.findall(FENCE.sub("", _read(path))):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part \
        else path
    if not os.path.exists(resolved):
      problems.append(f"{target}: no such file {_rel(resolved)}")
    elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
      problems.append(f"{target}: no heading #{anchor} in {_rel(resolved)}")
  assert not problems, f"{_rel(path)}:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
  readme = _read(os.path.join(REPO, "README.md"))
  linked = {os.path.normpath(t.partition("#")[0]) for t in LINK.findall(readme)}
  missing = [_rel(p) for p in DOCS[1:] if _rel(p) not in linked]
  assert not missing, f"docs pages the README does not link: {', '.join(missing)}"


def test_configuration_md_is_generated_from_config_py():
  from jaxbench import docs
  with open(docs.CONFIGURATION_MD, encoding="utf-8") as f:
    current = f.read()
  assert current == docs.configuration_md(), (
      f"docs/configuration.md differs from jaxbench/config.py's documentation; regenerate it "
      f"with `{docs.REGENERATE}` and commit the result")


@pytest.mark.parametrize("line, problem", [
    ("jaxbench trian --config=configs/mpt.py:tiny", "unknown command 'trian'"),
    ("jaxbench train --config.stepz=3", "no config key 'stepz'"),
    ("jaxbench compare a b --lables=x,y", "--lables: not a flag of compare"),
    ("jaxbench train --config=configs/gpt.py:tiny", "no such config file"),
    ("./launch.sh --backnd=cpu -- train", "--backnd: not an option of launch.sh"),
    ("./launch.sh --backend=cpu -- train --workdri=x", "--workdri: not a flag of train"),
    ("torchrun --nproc_per_node=2 -m jaxbench train --num_process=2", "--num_process"),
    ("python -m jaxbench.profiling runs/x --topp=3", "--topp: not a flag"),
    ('sbatch --wrap "srun ./launch.sh -- compile --targte=h100"', "--targte"),
    ("for fw in jax torch; do jaxbench train --config.framework=$fw --bad; done", "--bad"),
])
def test_the_checker_finds_what_is_wrong(line, problem):
  assert any(problem in p for p in check_line(line)), check_line(line)


@pytest.mark.parametrize("line", [
    "jaxbench train --config=configs/mpt.py:350m --config.dtype=bfloat16 --config.model.remat=dots",
    "jaxbench compile --describe_local[=FILE] --device_index=0",
    "jaxbench compile --nojson --target=h100,mi250x",
    "jaxbench sweep --sweep=configs/sweeps/cpu_tiny.py --out=DIR [--dry_run]",
    "jaxbench report SWEEP_A SWEEP_B [...] [--baseline=LABEL] [--labels=A,B,...] [--out=DIR]",
    "jaxbench help keys remat",
    "jaxbench <command> --help",
    "jaxbench compile: mpt:7b (6,657.4M params) bfloat16, batch 64",  # a line of output
    "./launch.sh --backend=cpu --local_processes=2 --devices_per_process=2 -- train",
    "python -m jaxbench.docs --check",
    ".venv/bin/python -m ruff check jaxbench tests benchmarks",
    "XLA_FLAGS=--xla_force_host_platform_device_count=4 jaxbench train --config.mesh.fsdp=4",
])
def test_the_checker_passes_what_is_right(line):
  assert check_line(line) == []
