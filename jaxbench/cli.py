"""The `jaxbench` console script: `jaxbench <command> [flags]`; each command is also
`python -m jaxbench.<command>`."""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxbench.errors import BadInput, bad_input

COMMANDS = {
    "train": ("jaxbench.train", "one training run (absl flags + an ml_collections config file)"),
    "prepare": ("jaxbench.prepare", "text files or folders -> token files + meta.json for data.path"),
    "sweep": ("jaxbench.sweep", "a grid of training runs from a sweep file, each its own process; "
              "resumable"),
    "report": ("jaxbench.report", "tables and PNG plots of a sweep (throughput, MFU, memory, with "
               "intervals); of several sweeps, a study side by side"),
    "compare": ("jaxbench.compare", "throughput ratio, MFU, loss-curve agreement and what differs, "
                "between run directories"),
    "portability": ("jaxbench.portability", "lower the train step for cpu, cuda, rocm and tpu, "
                    "without the hardware"),
    "compile": ("jaxbench.compile", "compile the train step for a GPU that is not here: memory "
                "fit, kernels, collectives, roofline bound"),
    "peak": ("jaxbench.peak", "measure this machine's matmul peak (TFLOP/s per device)"),
    "export-hf": ("jaxbench.export_hf", "a run's latest checkpoint as a Hugging Face model folder "
                  "(safetensors + config.json)"),
    "profile": ("jaxbench.profiling", "the XLA ops that took the most time in a run's trace "
                "(profile_steps), with the model code each came from"),
}


class FlagParser(argparse.ArgumentParser):
  """How every jaxbench command with plain flags reads them (train, compile and portability read
  absl flags with a config: config.parse_flags): a usage error raises BadInput, which the
  command's main turns into one line and exit 2 (errors.bad_input), where argparse would print
  its usage and exit by itself."""

  def error(self, message):
    raise BadInput(message)


def asks_for_help(argv: list[str]) -> bool:
  """Whether a command's argv (argv[0] its name) asks for its help text."""
  return any(a in ("-h", "--help", "--helpfull") for a in argv[1:])


def usage() -> str:
  lines = ["usage: jaxbench <command> [flags]   (jaxbench <command> --help for its flags)", "",
           "commands:"]
  lines += [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
  lines += [f"  {'help':<11} help COMMAND: its flags; help keys [PATTERN]: the config keys"]
  return "\n".join(lines)


def help_keys(patterns: list[str]) -> int:
  """`jaxbench help keys [PATTERN ...]`: the config keys whose name or meaning holds a pattern
  (all without one), with their whole text."""
  from jaxbench import config as config_lib
  docs = config_lib.key_docs()
  wanted = [p.lower() for p in patterns]
  found = [d for d in docs
           if not wanted or any(p in d["key"].lower() or p in d["meaning"].lower() for p in wanted)]
  if not found:
    print(f"jaxbench help: no config key matches {' '.join(patterns)!r}", file=sys.stderr)
    return 2
  print(config_lib.format_key_docs(found, full=True))
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  from jaxbench import startup
  startup.configure()  # the command's module may import JAX: before it does
  if len(argv) < 2:
    print(usage(), file=sys.stderr)
    return 2  # a command is needed: usage, not success
  if argv[1] in ("-h", "--help"):
    print(usage())
    return 0
  if argv[1] == "help":
    if argv[2:3] == ["keys"]:
      return help_keys(argv[3:])
    if len(argv) > 2 and argv[2] in COMMANDS:
      return main([argv[0], argv[2], "--help"])
    print(usage())
    return 0
  name = argv[1]
  if name not in COMMANDS:
    return bad_input("jaxbench", f"unknown command {name!r}; allowed: {', '.join(COMMANDS)}")
  module = importlib.import_module(COMMANDS[name][0])
  return module.main([f"jaxbench {name}", *argv[2:]])


if __name__ == "__main__":
  sys.exit(main())
