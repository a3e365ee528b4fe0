"""Tests for jaxbench.peak: the per-logical-device peak behind every MFU figure."""

import dataclasses
import datetime
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from jaxbench import peak

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  device_kind: str
  platform: str


@dataclasses.dataclass(frozen=True)
class FakeGpu(FakeDevice):
  core_count: int


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXBENCH_CACHE_DIR", str(tmp_path))
  monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
  # A quiet machine, whatever else runs on this one: tests of the busy case set their own load.
  monkeypatch.setattr(peak, "load_average", lambda: 0.0)
  return tmp_path


def _no_measuring(*args, **kwargs):
  raise AssertionError("measure_peak must not be called here")


# (device_kind, platform, bf16 per logical device, f32 per logical device or None)
TABLE_CASES = [
    ("NVIDIA A100-SXM4-40GB", "gpu", 312.0, 156.0),
    ("NVIDIA A100-SXM4-80GB", "cuda", 312.0, 156.0),
    ("NVIDIA A100 80GB PCIe", "gpu", 312.0, 156.0),
    ("NVIDIA H100 80GB HBM3", "gpu", 989.4, 494.7),
    ("NVIDIA H100 PCIe", "gpu", 756.0, 378.0),
    ("NVIDIA H100 NVL", "gpu", 835.5, 417.5),
    ("NVIDIA H200", "gpu", 989.4, 494.7),
    ("NVIDIA H200 NVL", "gpu", 835.5, 417.5),
    ("NVIDIA GH200 480GB", "gpu", 989.4, 494.7),
    ("NVIDIA L40S", "gpu", 362.05, 183.0),
    ("AMD Instinct MI250X", "rocm", 191.5, 47.85),  # 383 / 2 GCDs
    ("AMD Instinct MI250", "gpu", 181.05, 45.25),
    ("AMD Instinct MI210", "gpu", 181.0, 45.3),
    ("AMD Instinct MI300X", "rocm", 1307.4, 163.4),
    ("AMD Instinct MI300A", "gpu", 980.6, 122.6),
    ("AMD Instinct MI325X", "gpu", 1307.4, 163.4),
    ("TPU v2", "tpu", 22.5, None),  # 45 per chip / 2 cores
    ("TPU v3", "tpu", 61.5, None),  # 123 per chip / 2 cores
    ("TPU v4", "tpu", 275.0, None),
    ("TPU v5 lite", "tpu", 197.0, None),
    ("TPU v5p", "tpu", 459.0, None),
    ("TPU v5", "tpu", 459.0, None),
    ("TPU v6 lite", "tpu", 918.0, None),
    ("TPU v6e", "tpu", 918.0, None),
]


@pytest.mark.parametrize("kind,platform,bf16,f32", TABLE_CASES)
def test_table_lookup(kind, platform, bf16, f32):
  p = peak.table_peak(kind, platform, "bfloat16")
  assert (p.tflops, p.source) == (bf16, "table"), p
  assert kind in p.detail
  p = peak.table_peak(kind, platform, "float32")
  if f32 is None:
    assert (p.tflops, p.source) == (None, "unknown")
    assert "precision" in p.detail
  else:
    assert (p.tflops, p.source) == (f32, "table"), p


@pytest.mark.parametrize("kind,platform", [
    ("NVIDIA GeForce RTX 4090", "gpu"),
    ("NVIDIA B200", "gpu"),
    ("AMD Instinct MI100", "rocm"),
    ("TPU v4 lite", "tpu"),
    ("TPU7x", "tpu"),
    ("", "gpu"),
    ("cpu", "cpu"),
    ("NVIDIA A100-SXM4-40GB", "cpu"),  # the CPU is never taken from the table
])
@pytest.mark.parametrize("dtype", peak.DTYPES)
def test_table_unknown(kind, platform, dtype):
  p = peak.table_peak(kind, platform, dtype)
  assert p.tflops is None and p.source == "unknown" and p.detail


def test_table_logical_devices_and_ambiguity():
  # One MI250X card is two JAX devices, one TPU v3 chip is two: the table is per device, never per card/chip.
  assert peak.table_peak("AMD Instinct MI250X", "gpu", "bfloat16").tflops == 383.0 / 2
  assert peak.table_peak("TPU v3", "tpu", "bfloat16").tflops == 123.0 / 2
  # ROCm names both parts' GCDs 'MI250X/MI250': their compute units tell them apart, else unknown
  # (either part's figure would be the other's wrong peak).
  ambiguous = peak.table_peak("AMD Instinct MI250X/MI250", "gpu", "bfloat16")
  assert ambiguous.tflops is None and ambiguous.source == "unknown"
  assert "peak_tflops" in ambiguous.detail and "191.5" in ambiguous.detail
  assert peak.table_peak("AMD Instinct MI250X/MI250", "gpu", "bfloat16", 96).tflops is None
  x = peak.table_peak("AMD Instinct MI250X/MI250", "gpu", "bfloat16", 110)
  assert (x.tflops, x.source) == (191.5, "table") and "110 compute units" in x.detail
  assert peak.table_peak("AMD Instinct MI250X/MI250", "gpu", "float32", 104).tflops == 45.25
  # resolve_peak reads the device's core_count.
  mi250 = FakeGpu("AMD Instinct MI250X/MI250", "gpu", 104)
  assert peak.resolve_peak([mi250], "bfloat16").tflops == 181.05
  assert peak.resolve_peak([FakeDevice("AMD Instinct MI250X/MI250", "gpu")], "bfloat16").source == "unknown"
  with pytest.raises(ValueError):
    peak.table_peak("NVIDIA H100 PCIe", "gpu", "float16")


def test_table_f32_requires_default_precision(monkeypatch):
  # A non-default matmul precision (or TF32 switched off) changes how f32 dots run: the TF32 row would be wrong.
  with jax.default_matmul_precision("highest"):
    p = peak.table_peak("NVIDIA A100-SXM4-40GB", "gpu", "float32")
    assert p.tflops is None and "precision" in p.detail
    assert peak.table_peak("NVIDIA A100-SXM4-40GB", "gpu", "bfloat16").tflops == 312.0
  monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
  assert peak.table_peak("NVIDIA H100 PCIe", "gpu", "float32").tflops is None
  assert peak.table_peak("AMD Instinct MI300X", "gpu", "float32").tflops == 163.4


def _write_cache_entry(devices, dtype, tflops, cache_dir, **conditions):
  """A cache entry measured a minute ago on this machine, quiet, with `conditions` replaced."""
  path = cache_dir / "peaks.json"
  data = json.loads(path.read_text()) if path.exists() else {}
  measured = peak.measurement_conditions(devices)
  measured["measured_at"] = (datetime.datetime.now(datetime.timezone.utc)
                             - datetime.timedelta(minutes=1)).isoformat(timespec="seconds")
  measured.update(conditions)
  data[peak._cache_key(devices, dtype)] = {"tflops": tflops, "measured_at": measured["measured_at"],
                                           "seconds": 2.0, "size": 1024, "conditions": measured}
  path.write_text(json.dumps(data))


def test_resolve_override_wins(monkeypatch):
  monkeypatch.setattr(peak, "measure_peak", _no_measuring)
  for dev in (FakeDevice("cpu", "cpu"), FakeDevice("NVIDIA H100 PCIe", "gpu"), FakeDevice("Mystery", "gpu")):
    p = peak.resolve_peak([dev], "bfloat16", override_tflops=123.0)
    assert (p.tflops, p.source) == (123.0, "override")
  for bad in (-1.0, math.nan, math.inf):
    with pytest.raises(ValueError):
      peak.resolve_peak([FakeDevice("cpu", "cpu")], "float32", override_tflops=bad)


def test_resolve_table_beats_cache(monkeypatch, cache_dir):
  monkeypatch.setattr(peak, "measure_peak", _no_measuring)
  devices = [FakeDevice("NVIDIA A100-SXM4-80GB", "gpu")] * 2
  _write_cache_entry(devices, "bfloat16", 250.0, cache_dir)
  p = peak.resolve_peak(devices, "bfloat16")
  assert (p.tflops, p.source) == (312.0, "table")


def test_resolve_uses_cache_without_measuring(monkeypatch, cache_dir):
  monkeypatch.setattr(peak, "measure_peak", _no_measuring)
  cpu = [FakeDevice("cpu", "cpu")] * 8
  _write_cache_entry(cpu, "float32", 0.0125, cache_dir)
  p = peak.resolve_peak(cpu, "float32")
  assert (p.tflops, p.source) == (0.0125, "measured")
  assert p.conditions["measured_at"] in p.detail and p.conditions["by_this_run"] is False
  assert 50 < p.conditions["age_s"] < 600 and p.conditions["load_per_core"] == 0.0
  # The cache is keyed by the number of devices sharing the host: 1 device must not reuse the 8-device figure.
  assert peak.cached_peak(cpu[:1], "float32") is None
  # A TPU f32 peak is unknown in the table but a measurement of this exact setup is honest.
  tpu = [FakeDevice("TPU v4", "tpu")] * 4
  _write_cache_entry(tpu, "float32", 100.0, cache_dir)
  assert peak.resolve_peak(tpu, "float32").tflops == 100.0


def test_resolve_measures_on_cpu_and_writes_cache(monkeypatch, cache_dir):
  calls = []

  def fake_measure(devices, dtype, *, size=None, seconds=2.0):
    calls.append((len(devices), dtype))
    return 0.042

  monkeypatch.setattr(peak, "measure_peak", fake_measure)
  cpu = [FakeDevice("cpu", "cpu")] * 2
  p = peak.resolve_peak(cpu, "bfloat16")
  assert (p.tflops, p.source) == (0.042, "measured") and calls == [(2, "bfloat16")]
  entry = json.loads((cache_dir / "peaks.json").read_text())[peak._cache_key(cpu, "bfloat16")]
  assert entry["tflops"] == 0.042 and entry["measured_at"].endswith("+00:00") and entry["size"] > 0
  assert peak.resolve_peak(cpu, "bfloat16").tflops == 0.042 and len(calls) == 1  # now from the cache
  assert [f for f in os.listdir(cache_dir) if f != "peaks.json"] == []  # no temp file left behind

  monkeypatch.setattr(peak, "measure_peak", _no_measuring)
  p = peak.resolve_peak(cpu, "float32", measure_if_missing_on_cpu=False)
  assert p.tflops is None and p.source == "unknown"


def test_processes_sharing_a_cpu_neither_measure_nor_read_one_process_figure(monkeypatch, cache_dir):
  # Two processes of one run on one host: each measuring at once would cache half the host's
  # peak under the key a single process reads (every later single-process MFU 2x too high), and
  # a single process's cached figure is not one device's share of the host.
  monkeypatch.setattr(peak, "measure_peak", _no_measuring)
  cpu = [FakeDevice("cpu", "cpu")]
  _write_cache_entry(cpu, "float32", 0.2, cache_dir)
  before = (cache_dir / "peaks.json").read_text()
  p = peak.resolve_peak(cpu, "float32", host_processes=2)
  assert p.tflops is None and p.source == "unknown"
  assert "2 processes" in p.detail and "peak_tflops" in p.detail
  assert (cache_dir / "peaks.json").read_text() == before
  assert peak.resolve_peak(cpu, "float32", 0.05, host_processes=2).tflops == 0.05  # override
  assert peak.resolve_peak(cpu, "float32", host_processes=1).tflops == 0.2
  # A GPU's datasheet peak is per device whatever shares the host.
  h100 = [FakeDevice("NVIDIA H100 80GB HBM3", "gpu")]
  assert peak.resolve_peak(h100, "bfloat16", host_processes=8).source == "table"


@pytest.mark.parametrize("kind", ["NVIDIA GeForce RTX 4090", "TPU v5 lite"])
def test_resolve_unknown_tells_user_what_to_do(monkeypatch, kind):
  monkeypatch.setattr(peak, "measure_peak", _no_measuring)  # only the CPU is measured on the fly
  dtype = "float32"
  p = peak.resolve_peak([FakeDevice(kind, "gpu" if "TPU" not in kind else "tpu")], dtype)
  assert p.tflops is None and p.source == "unknown"
  assert "jaxbench peak" in p.detail and "peak_tflops" in p.detail and kind in p.detail


def test_corrupt_cache_reads_as_empty(monkeypatch, cache_dir):
  cpu = [FakeDevice("cpu", "cpu")]
  for content in ("{not json", "[1, 2]", ""):
    (cache_dir / "peaks.json").write_text(content)
    assert peak.cached_peak(cpu, "float32") is None
  (cache_dir / "peaks.json").write_text(json.dumps({peak._cache_key(cpu, "float32"): {"tflops": "fast"},
                                                    peak._cache_key(cpu, "bfloat16"): {"tflops": -1}}))
  assert peak.cached_peak(cpu, "float32") is None and peak.cached_peak(cpu, "bfloat16") is None
  monkeypatch.setattr(peak, "measure_peak", lambda *a, **k: 0.5)
  assert peak.measure_and_cache(cpu, "float32", size=64, seconds=0.1).tflops == 0.5
  assert peak.cached_peak(cpu, "float32").tflops == 0.5


def test_cache_key_names_the_host(monkeypatch):
  key = peak._cache_key([FakeDevice("cpu", "cpu")] * 8, "float32")
  assert "n=8" in key and "float32" in key and jax.__version__ in key
  assert f"cpus={peak.usable_cpus()}" in key and f"v{peak.CACHE_VERSION}" in key
  # A process held to one core (taskset) must not read the whole host's figure.
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
  assert "cpus=1" in peak._cache_key([FakeDevice("cpu", "cpu")], "float32")


@pytest.mark.parametrize("dtype", peak.DTYPES)
def test_measure_peak_cpu(dtype):
  tflops = peak.measure_peak(jax.devices()[:1], dtype, size=128, seconds=0.2)
  assert math.isfinite(tflops) and tflops > 0


def test_measure_is_per_device_when_devices_share_a_host():
  # 8 forced CPU devices share this host's cores: each must get ~1/8 of the 1-device figure, not the whole host.
  script = textwrap.dedent("""
      import jax
      from jaxbench import peak
      devices = jax.devices()
      assert len(devices) == 8, devices
      one = peak.measure_peak(devices[:1], "float32", size=512, seconds=0.6)
      eight = peak.measure_peak(devices, "float32", size=512, seconds=0.6)
      print(one, eight)
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  one, eight = map(float, out.stdout.split()[-2:])
  assert 0 < eight < 0.6 * one, (one, eight)


def test_main_json_with_corrupt_cache(capsys, cache_dir):
  (cache_dir / "peaks.json").write_text("\x00garbage")
  assert peak.main(["jaxbench peak", "--dtypes=float32", "--seconds=0.3", "--size=256", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  (r,) = out["results"]
  assert r["dtype"] == "float32" and r["platform"] == "cpu" and r["n_devices"] == len(jax.local_devices())
  assert r["measured_tflops_per_device"] > 0 and r["table_tflops"] is None and r["device_kind"]
  assert r["cache_file"] == str(cache_dir / "peaks.json")
  assert peak.cached_peak(jax.local_devices(), "float32").tflops == r["measured_tflops_per_device"]


def test_main_table_output_and_no_cache(capsys, cache_dir):
  assert peak.main(["jaxbench peak", "--dtypes=float32", "--seconds=0.2", "--size=128", "--no_cache"]) == 0
  out = capsys.readouterr().out
  assert "float32" in out and "TFLOP/s per device" in out and "not written" in out
  assert not (cache_dir / "peaks.json").exists()
  assert peak.main(["jaxbench peak", "--dtypes=float16"]) == 2  # bad input: one line, as every command
  assert capsys.readouterr().err == ("jaxbench peak: bad input: unknown dtype 'float16'; choose from "
                                     "bfloat16,float32\n")


@pytest.mark.parametrize("conditions, why", [
    ({"machine": "another-boot-id"}, "measured on another machine (boot id): another-boot-id vs"),
    ({"cpu": "Some Other CPU"}, "measured on another CPU: Some Other CPU vs"),
    ({"cores": "7"}, "measured on another set of cores: 7 vs"),
    ({"xla_flags": "--xla_cpu_use_fusion_emitters=false"}, "measured with other XLA_FLAGS: --xla_cpu"),
    ({"measured_at": "2026-01-01T00:00:00+00:00"}, "h ago (used up to 1 h)"),
    ({"load_avg_1m": 9.0, "load_per_core": 4.5}, "measured under load (load average 9.0 on"),
    ({"load_per_core": None}, "measured under load"),
])
def test_cpu_cache_rejects_a_foreign_or_stale_entry(monkeypatch, cache_dir, conditions, why):
  # issue #26: one cache said 0.186 TFLOP/s, a fresh measurement 0.077, a quiet one 0.447; every
  # later CPU MFU inherited whatever load the first run saw. Such an entry is now measured again.
  calls = []
  monkeypatch.setattr(peak, "measure_peak", lambda *a, **k: calls.append(1) or 0.077)
  cpu = [FakeDevice("cpu", "cpu")]
  _write_cache_entry(cpu, "float32", 0.186, cache_dir, **conditions)
  assert peak.cached_peak(cpu, "float32") is None
  p = peak.resolve_peak(cpu, "float32")
  assert (p.tflops, p.source, len(calls)) == (0.077, "measured", 1)
  assert why in p.detail and "the cached figure 0.186 TFLOP/s was not used" in p.detail, p.detail
  assert p.conditions["by_this_run"] is True and p.conditions["age_s"] == 0.0
  # The fresh measurement replaced it, with its conditions: the next run reads it.
  assert peak.resolve_peak(cpu, "float32").conditions["by_this_run"] is False and len(calls) == 1


def test_cpu_cache_entry_without_conditions_is_measured_again(monkeypatch, cache_dir):
  monkeypatch.setattr(peak, "measure_peak", lambda *a, **k: 0.3)
  cpu = [FakeDevice("cpu", "cpu")]
  (cache_dir / "peaks.json").write_text(json.dumps({peak._cache_key(cpu, "float32"): {
      "tflops": 0.186, "measured_at": "2026-01-01T00:00:00+00:00"}}))  # written before conditions
  p = peak.resolve_peak(cpu, "float32")
  assert p.tflops == 0.3 and "does not record where and under what load" in p.detail


def test_a_peak_measured_under_load_is_used_by_its_run_and_not_by_later_ones(monkeypatch, cache_dir):
  calls = []
  monkeypatch.setattr(peak, "measure_peak", lambda *a, **k: calls.append(1) or 0.1)
  monkeypatch.setattr(peak, "load_average", lambda: 8.0)
  cpu = [FakeDevice("cpu", "cpu")]
  p = peak.resolve_peak(cpu, "bfloat16")
  assert p.tflops == 0.1 and p.conditions["load_avg_1m"] == 8.0 and p.conditions["by_this_run"]
  assert p.conditions["cores"] and p.conditions["cpu"] and p.conditions["machine"]
  assert peak.resolve_peak(cpu, "bfloat16").conditions["by_this_run"] and len(calls) == 2


def test_gpu_cache_entries_are_not_aged():
  # A GPU's matmul peak does not move with the host's load: `jaxbench peak` measures it once.
  gpu = [FakeDevice("Mystery GPU", "gpu")]
  path = peak.cache_path()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({peak._cache_key(gpu, "bfloat16"): {"tflops": 100.0,
                                                  "measured_at": "2024-01-01T00:00:00+00:00"}}, f)
  assert peak.cached_peak(gpu, "bfloat16").tflops == 100.0


def test_cores_as_taskset_writes_them():
  assert peak._ranges({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8" and peak._ranges({3}) == "3"


def test_mfu_above_the_peak_is_never_a_figure():
  # Found by a run on a loaded CPU: its peak, measured while other jobs held the cores, was below
  # what the steps later reached, and progress lines read "MFU 116.3%".
  from jaxbench import compare, runlog
  assert runlog.mfu(0.05, 0.1) == pytest.approx(0.5) and runlog.mfu(0.1, 0.1) == 1.0
  assert runlog.mfu(0.0686, 0.0586) is None and runlog.mfu(0.05, None) is None
  r = runlog.step_record(3, 2.0, 1.0, 1e-3, 0.01, 1000, 1, 586_000, 0.0586)  # 0.0586 TFLOP/s: at it
  assert r["mfu"] == pytest.approx(1.0) and "mfu_above_peak" not in r
  r = runlog.step_record(3, 2.0, 1.0, 1e-3, 0.01, 1000, 1, 686_000, 0.0586)
  assert r["mfu"] is None and r["mfu_above_peak"]
  assert "MFU unknown (above the peak)" in runlog.progress_line(r, 10, None)
  p = runlog.Progress()
  p.status, p.steps, p.step_times, p.final_loss = "finished", 3, [0.01, 0.01], 2.0
  s = runlog.summary(p, tokens_per_step=1000, n_devices=1, flops_per_token=686_000, peak_tflops=0.0586,
                     peak_source="measured", peak_memory=(None, "none"), backend="cpu",
                     device_kind="cpu", n_params=1)
  assert s["mfu_median"] is None
  assert "0.0686 TFLOP/s/device is above the measured peak of 0.0586" in s["mfu_note"]
  assert "jaxbench peak --no_cache" in s["mfu_note"]
  assert "MFU unknown" in runlog.done_line(s) and "%" not in runlog.done_line(s).split("MFU")[1][:12]
  table = runlog.summary(p, tokens_per_step=1000, n_devices=1, flops_per_token=686_000,
                         peak_tflops=0.05, peak_source="table", peak_memory=(None, "none"),
                         backend="cpu", device_kind="cpu", n_params=1)
  assert "the FLOP count or the step timing is wrong" in table["mfu_note"]
  run = compare.Run("a", "a", {"peak": {"source": "measured", "tflops": 0.0586}}, s, [])
  text, why = compare.mfu_text(run)
  assert text == "unknown (above the measured peak)" and why == s["mfu_note"]
