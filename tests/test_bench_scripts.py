"""The benchmark scripts run end to end and return their numbers (smoke tests; no speed is asserted).

The scripts are not a package, so they are loaded from their files. Together these take about 40 s on
2 CPU cores, almost all of it XLA compilation of the training step.
"""

import importlib.util
import math
import pathlib

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str):
  spec = importlib.util.spec_from_file_location(f"_bench_script_{name}", SCRIPTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_networks_shrunk_forward_and_train_step():
  bench = _load_script("bench_networks")
  # One model keeps the test short: the shrunk DDPM++ (VP) training step alone takes ~25 s to compile.
  out = bench.main(["--shrink", "--quick", "--models", "ddpmpp"])
  assert out["params"]["ddpmpp"] > 0
  row = out["results"]["ddpmpp"][8]  # --quick: batch 8 only
  assert set(row) == {"forward", "train"}
  assert _positive(row["forward"]["images_per_s"]), row["forward"]
  assert _positive(row["train"]["images_per_s"]), row["train"]
  assert math.isfinite(row["train"]["loss"])
  assert len(row["train"]["times_s"]) == bench.QUICK["repeats"]


def test_bench_sampling_quick():
  out = _load_script("bench_sampling").main(["--quick"])
  assert _positive(out["speedup_raw"]) and _positive(out["speedup_per_nfe"]), out
  assert out["ode_device"]["nfe"] > 0 and out["ode_scipy"]["nfe"] > 0
  assert _positive(out["pc"]["samples_per_s"])
