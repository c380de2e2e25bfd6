"""The 2-D default through the launcher, as the README runs it (shortened), and its command-line errors."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

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
  for name in ["samples.png", "score_field.png", "loss.png", "metrics.json", "samples.npz", "checkpoint.msgpack"]:
    path = workdir / name
    assert path.exists() and path.stat().st_size > 0, name
  assert (workdir / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
