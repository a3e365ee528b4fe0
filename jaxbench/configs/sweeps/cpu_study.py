"""A small sweep to run once per machine (or setting) and read together: a study.

  jaxbench sweep --sweep=configs/sweeps/cpu_study.py --out=sweeps/A        # on machine A
  jaxbench sweep --sweep=configs/sweeps/cpu_study.py --out=sweeps/B        # on machine B
  jaxbench report sweeps/A sweeps/B --out=study                            # B against A

Each point runs three times, interleaved (every point, then every point again). Two settings of
one machine, XLA_FLAGS for instance, are two sweeps alternated by raising --repeats:
  for k in 1 2 3; do jaxbench sweep ... --out=sweeps/A --repeats=$k
                     XLA_FLAGS=... jaxbench sweep ... --out=sweeps/B --repeats=$k; done
"""


def get_sweep():
  return {
      "base": "configs/mpt.py:nano",
      "fixed": {"steps": 20, "warmup_steps_excluded": 3, "log_every": 0},
      "axes": {"preset": ["nano", "tiny"]},
      "repeats": 3,
      "timeout_s": 600,
  }
