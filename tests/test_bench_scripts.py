"""The benchmark scripts run end to end and return their numbers (smoke tests; no speed is asserted).

The scripts are not a package, so they are loaded from their files. Together these take about 90 s on
2 CPU cores, almost all of it XLA compilation of training steps. The test of the PyTorch baseline script is
marked slow and needs a checkout of the original (``SCORE_SDE_PYTORCH``).
"""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str):
  spec = importlib.util.spec_from_file_location(f"_bench_script_{name}", SCRIPTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow  # ~45 s of compiles on 2 cores; bench_train's smoke test covers the training path
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


# ---- scripts/bench_train.py and scripts/bench_train_torch.py -------------------------------------------

_ROOT = SCRIPTS.parent
_DDPMPP = str(_ROOT / "configs" / "vp" / "cifar10_ddpmpp_continuous.py")


def _json_line(stdout: str) -> dict:
  """The last line of ``stdout`` parsed as JSON: the bench_train* scripts' machine-readable result."""
  return json.loads(stdout.strip().splitlines()[-1])


def _check_train_json(out: dict) -> None:
  for name in ("images_per_s", "step_s"):
    assert _positive(out[name]), (name, out)
  assert isinstance(out["device"], str) and out["device"], out
  assert math.isclose(out["images_per_s"] * out["step_s"], out["batch"], rel_tol=1e-6), out


@pytest.mark.slow  # 32 s on 2 cores: the default suite keeps the cheaper bench smoke runs
def test_bench_train_shrunk_prints_json_line(capsys):
  # The shrunk DDPM++ step takes ~20 s to compile on 2 CPU cores.
  result = _load_script("bench_train").main(["--shrink", "--batch", "2", "--steps", "2", "--config", _DDPMPP])
  out = _json_line(capsys.readouterr().out)
  _check_train_json(out)
  assert _positive(out["compile_s"]), out
  assert out["batch"] == 2 and out["n_jitted_steps"] == 1 and _positive(out["flops_per_step"]), out
  assert out == json.loads(json.dumps(result))


def test_bench_train_rejects_bad_input_before_compiling(capsys):
  bench = _load_script("bench_train")
  with pytest.raises(SystemExit) as exit_info:
    bench.main(["--shrink", "--batch", "2", "--steps", "1", "--config", _DDPMPP, "--config.model.no_such_field=3"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "unknown config key --config.model.no_such_field" in err and "'no_such_field'" in err, err
  # A batch that does not split over the devices: 2 host devices in a fresh process.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_train.py"), "--shrink", "--batch", "3", "--steps", "1",
                         "--config", _DDPMPP], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert "--batch 3 is not divisible by the number of devices 2" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_bench_train_torch_shrunk_original():
  """The original PyTorch step (needs torch and a score_sde_pytorch checkout in $SCORE_SDE_PYTORCH)."""
  pytest.importorskip("torch")
  original = os.environ.get("SCORE_SDE_PYTORCH")
  if not original or not pathlib.Path(original, "losses.py").is_file():
    pytest.skip("set SCORE_SDE_PYTORCH to a checkout of yang-song/score_sde_pytorch")
  # A subprocess: the original's top-level `configs` package would clash with score_jax's in this process.
  proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_train_torch.py"), "--original", original, "--shrink",
                         "--batch", "2", "--steps", "2", "--config", "configs/vp/cifar10_ddpmpp_continuous.py"],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  out = _json_line(proc.stdout)
  _check_train_json(out)
  assert out["compile_s"] == 0.0 and out["implementation"] == "score_sde_pytorch", out


def test_bench_train_torch_rejects_bad_device_and_ops_before_importing_the_original(capsys):
  pytest.importorskip("torch")
  import torch

  bench = _load_script("bench_train_torch")
  common = ["--original", "/no/such/checkout", "--config", "configs/vp/cifar10_ddpmpp_continuous.py",
            "--batch", "2", "--steps", "1"]
  with pytest.raises(SystemExit) as exit_info:
    bench.main(common + ["--ops", "cuda"])
  assert exit_info.value.code == 2
  assert "--ops cuda needs --device cuda" in capsys.readouterr().err
  if not torch.cuda.is_available():
    with pytest.raises(SystemExit) as exit_info:
      bench.main(common + ["--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch" in err and "sees no CUDA device" in err, err


def test_bench_train_torch_native_upfirdn2d_is_the_originals_cpu_path():
  """--ops native rebinds the networks' upfirdn2d to the original's upfirdn2d_native; on CPU tensors it must
  equal the original's own dispatch (which takes that path for CPU tensors), for up, down and padding."""
  pytest.importorskip("torch")
  original = os.environ.get("SCORE_SDE_PYTORCH")
  if not original or not pathlib.Path(original, "losses.py").is_file():
    pytest.skip("set SCORE_SDE_PYTORCH to a checkout of yang-song/score_sde_pytorch")
  code = f"""
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("b", {str(SCRIPTS / "bench_train_torch.py")!r})
b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
o = b.import_original({original!r}, ops="native")
from models import up_or_down_sampling as u
reference = sys.modules["op.upfirdn2d"].upfirdn2d
assert u.upfirdn2d is not reference
torch.manual_seed(0)
x = torch.randn(2, 3, 8, 8)
k = torch.tensor([[1., 3., 3., 1.]]).T @ torch.tensor([[1., 3., 3., 1.]]) / 64
for up, down, pad in ((2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (1, 2))):
  a, r = u.upfirdn2d(x, k, up=up, down=down, pad=pad), reference(x, k, up=up, down=down, pad=pad)
  assert a.shape == r.shape and torch.equal(a, r), (up, down, pad)
print("ok", o.ops, round(o.ops_build_s, 3))
"""
  # A subprocess: the original's top-level packages would clash with score_jax's configs in this process.
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("ok native"), proc.stdout


def test_gpu_session_rejects_an_unknown_stage_before_running_anything(tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(["bash", str(SCRIPTS / "gpu_session.sh"), "smoke", "no_such_stage"], capture_output=True,
                        text=True, timeout=60, env=dict(os.environ, OUT=str(out)))
  assert proc.returncode == 2, proc.stderr
  assert "unknown stage 'no_such_stage'" in proc.stderr and "train128" in proc.stderr, proc.stderr
  assert not out.exists()


@pytest.mark.slow  # ~40 s on 2 cores: the shrunk DDPM++ step's compile
def test_gpu_session_smoke_stage_records_both_implementations(tmp_path):
  """The prepared GPU script's plumbing, on whatever device is here: its smoke stage runs bench_train.py (and
  bench_train_torch.py when $SCORE_SDE_PYTORCH is a checkout) and records each JSON line in results.jsonl."""
  out = tmp_path / "out"
  env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
  proc = subprocess.run(["bash", str(SCRIPTS / "gpu_session.sh"), "smoke"], capture_output=True, text=True,
                        timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr + proc.stdout
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  by_name = {row["name"]: row for row in rows}
  assert by_name["smoke_jax"]["rc"] == 0, by_name
  _check_train_json(by_name["smoke_jax"]["result"])
  original = os.environ.get("SCORE_SDE_PYTORCH")
  if original and pathlib.Path(original, "losses.py").is_file():
    assert by_name["smoke_torch"]["rc"] == 0, by_name
    _check_train_json(by_name["smoke_torch"]["result"])
    assert by_name["smoke_torch"]["result"]["ops"] == "native"
  else:
    assert "smoke_torch" not in by_name and "no score_sde_pytorch checkout" in proc.stdout
  assert "jax" in (out / "machine.txt").read_text()


# ---- scripts/compare_training.py (issue 17): score_jax and the original trained side by side ----------------------

@pytest.mark.slow  # ~2 min: both trainings, then bits/dim of both EMA models through --mode eval
def test_compare_training_runs_both_from_the_same_weights_at_toy_size(tmp_path):
  pytest.importorskip("torch")
  original = os.environ.get("SCORE_SDE_PYTORCH")
  if not original or not pathlib.Path(original, "losses.py").is_file():
    pytest.skip("set SCORE_SDE_PYTORCH to a checkout of yang-song/score_sde_pytorch")
  from helpers import tiny_data

  data = tiny_data(tmp_path / "data.npz", n=32)
  out = tmp_path / "compare"
  tiny = ["--config.data.image_size=8", "--config.model.nf=8", "--config.model.ch_mult=(1,2)",
          "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(4,)", "--config.eval.batch_size=4",
          "--config.sampling.ode_rtol=1e-3", "--config.sampling.ode_atol=1e-3"]
  proc = subprocess.run([sys.executable, str(SCRIPTS / "compare_training.py"), "--original", original, "--config",
                         "configs/vp/cifar10_ddpmpp_continuous.py", "--data", str(data), "--out", str(out),
                         "--steps", "3", "--batch", "4", "--seeds", "0", "--samples", "4", "--bpd_examples", "4",
                         "--threads", "1", *tiny], cwd=SCRIPTS.parent, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3]
  # the same initial weights and batch: the first losses differ only by the two implementations' own draws
  assert all(0.3 < r["score_jax"] / r["original"] < 3 for r in records), records
  for name in ("score_jax_ema", "original_ema", "loss_curves.png", "results.md", "results.json"):
    assert (out / name).exists(), name
  table = json.loads(proc.stdout.strip().splitlines()[-1])["table"]
  assert set(table["bpd"]) >= {"score_jax", "original", "difference"}
  assert all(0 < table["bpd"][k]["mean"] < 30 for k in ("score_jax", "original"))
