"""The 2-D default through the launcher, as the README runs it (shortened), and its command-line errors."""

import csv
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

CONFIG = "configs/toy/gmm2d.py"


def launch(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "score_jax.main", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("gmm2d")
  proc = launch("--config", CONFIG, "--workdir", str(workdir), "--noprogress", "--config.training.n_iters=2000",
                "--config.eval.num_samples=2048", "--config.eval.num_likelihood=256")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, json.loads((workdir / "metrics.json").read_text())


def test_writes_figures_metrics_and_checkpoint(short_run):
  workdir, _ = short_run
  for name in ["samples.png", "score_field.png", "loss.png", "metrics.json", "samples.npz", "model.json"]:
    path = workdir / name
    assert path.exists() and path.stat().st_size > 0, name
  assert (workdir / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (workdir / "checkpoints" / "2000" / "state").is_dir()  # the orbax checkpoint of the last step
  assert not [p for p in os.listdir(workdir) if ".tmp-" in p], "temporary files left behind"


def test_sample_quality_against_the_exact_mixture(short_run):
  _, m = short_run
  floor = m["reference_true_vs_true"]["sliced_wasserstein"]  # two independent true sets of the same size
  # Shortened run (2k steps, 2048 samples): measured ODE ~0.7x, PC ~2.1x the floor; an untrained or broken
  # model is at > 10x.
  assert m["ode"]["finite"] and m["pc"]["finite"]
  assert m["ode"]["sliced_wasserstein"] < 2.5 * floor, m["ode"]
  assert m["pc"]["sliced_wasserstein"] < 3.5 * floor, m["pc"]
  assert m["pc"]["nfe"] == 1000 * 2 and m["ode"]["nfe"] > 0


def test_ode_likelihood_against_the_exact_density(short_run):
  _, m = short_run
  ll = m["likelihood"]
  # With the exact score, the ODE likelihood is the exact log-density (method check, tight).
  assert abs(ll["nll_ode_exact_score"] - ll["nll_true"]) < 0.01, ll
  # The trained model: measured gap ~0.08 nats (2k steps); the NLL gap is >= 0 up to noise.
  assert -3 * ll["gap_sem"] < ll["gap"] < 0.25, ll


def test_eval_mode_reuses_the_checkpoint(short_run, tmp_path):
  workdir, _ = short_run
  proc = launch("--config", CONFIG, "--workdir", str(workdir), "--mode", "sample", "--noprogress",
                "--config.eval.num_samples=64", "--config.model.num_scales=50")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = launch("--config", CONFIG, "--workdir", str(tmp_path), "--mode", "eval", "--noprogress")
  assert proc.returncode != 0 and "no checkpoint at" in proc.stderr and "--mode=train" in proc.stderr


def test_help_and_bad_flags():
  proc = launch("--help")
  assert proc.returncode == 0 and "--workdir" in proc.stdout and "--mode" in proc.stdout
  assert "--config.training.sde=vesde" in proc.stdout
  proc = launch("--config", CONFIG, "--workdir", "unused", "--mode", "fly")
  assert proc.returncode != 0 and "fly" in proc.stderr and "train" in proc.stderr
  proc = launch("--config", CONFIG, "--workdir", "unused", "--config.data.dataset=imagenet")
  assert proc.returncode != 0 and "imagenet" in proc.stderr and "gmm2d" in proc.stderr
  proc = launch("--config", CONFIG, "--workdir", "unused", "--config.training.sde=vpde")
  assert proc.returncode != 0 and "vpde" in proc.stderr and "vpsde" in proc.stderr


# ---- the ablation command on the 2-D default (score_jax.ablate) ------------------------------------------------

def ablate(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "score_jax.ablate", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_ablate_writes_table_and_plots_and_resumes(short_run, tmp_path):
  workdir, _ = short_run
  out = tmp_path / "ablation"
  proc = ablate("--config", CONFIG, "--workdir", str(workdir), "--out", str(out), "--num_samples", "512",
                "--noprogress", "--grid", "sampling.method=ddim,heun", "--grid", "sampling.N=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "2 cells computed, 0 reused" in proc.stdout
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["sampling.method"], r["sampling.N"]) for r in rows] == [("ddim", "4"), ("heun", "4")]
  # NFE: N steps (Heun: 2 per step) plus the final denoising step of sampling.noise_removal
  assert [float(r["nfe"]) for r in rows] == [5, 9]
  for r in rows:
    assert 0 < float(r["sliced_w2"]) < 3 and float(r["samples_per_s"]) > 0 and float(r["nll"]) > 0
  table = (out / "results.md").read_text()
  assert "| method | N | nfe | sliced_w2 |" in table and table.count("\n| ddim |") == 1
  for png in ("quality_vs_nfe.png", "sweep_method.png", "samples.png"):
    assert (out / png).stat().st_size > 1000, png
  results = sorted(out.glob("cells/*/result.json"))
  stamps = [p.stat().st_mtime_ns for p in results]
  # the same arguments again recompute nothing; a wider grid computes only the new cells (in process: faster)
  from score_jax import ablate as ablate_lib
  from score_jax import configs_loader

  config = configs_loader.load_config(ROOT / CONFIG)
  grid = ["sampling.method=ddim,heun", "sampling.N=4"]
  again = ablate_lib.run_ablation(config, workdir, out, grid, num_samples=512, progress=False)
  assert (again["cells_computed"], again["cells_reused"]) == (0, 2)
  assert [p.stat().st_mtime_ns for p in results] == stamps
  wider = ablate_lib.run_ablation(config, workdir, out, grid[:1] + ["sampling.N=4,2"], num_samples=512,
                                  progress=False)
  assert (wider["cells_computed"], wider["cells_reused"]) == (2, 2)
  assert (out / "sweep_N.png").stat().st_size > 1000


@pytest.mark.parametrize("grid,message", [
    (["sampling.snrr=0.1"], "--grid key 'sampling.snrr' is not a config field; sampling has"),
    (["model.nf=8,16"], "only sampling.* fields can be swept"),
    (["sampling.snr=0.1,abc"], "--grid sampling.snr: 'abc' is not a number"),
    (["sampling.N=10,ten"], "--grid sampling.N: 'ten' is not an integer"),
    (["sampling.method=ddim,dpm"], "sampling.method='dpm'; expected one of ['pc', 'ode', 'ddim', 'dpm_solver', "),
    (["sampling.predictor=reverse_diffusion,leapfrog"], "Unknown predictor 'leapfrog'"),
    (["sampling.snr"], "expected KEY=V1,V2,..."),
])
def test_ablate_bad_input_fails_before_sampling(short_run, tmp_path, grid, message):
  from score_jax import ablate, configs_loader

  workdir, _ = short_run
  config = configs_loader.load_config(ROOT / CONFIG)
  with pytest.raises(ValueError) as info:
    ablate.run_ablation(config, workdir, tmp_path / "out", grid, num_samples=64, progress=False)
  assert message in str(info.value)
  assert not (tmp_path / "out").exists()


def test_ablate_refuses_a_checkpoint_of_another_model(short_run, tmp_path):
  from score_jax import ablate as ablate_lib
  from score_jax import configs_loader

  workdir, _ = short_run
  config = configs_loader.load_config(ROOT / CONFIG)
  config.model.features = (64, 64)
  with pytest.raises(ValueError, match="does not match config.model"):
    ablate_lib.run_ablation(config, workdir, tmp_path / "out", ["sampling.N=50"], num_samples=64, progress=False)
  assert not (tmp_path / "out").exists()
