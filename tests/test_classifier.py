"""The noise-conditional classifier: the full-size WRN's shapes, training and evaluation through the pipeline on tiny
labelled data, bad input, and the gradient of log p_t(y | x) used for class-conditional sampling."""

import ast
import json
import math
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT

from score_jax import builders, classifier, configs_loader, pipeline, sde_lib
from score_jax.nets import wideresnet

CONFIG_PATH = "configs/classifier/cifar10_wrn_noise_conditional.py"
CONFIG = ROOT / CONFIG_PATH

# The original's WRN-28-10 with its noise embedding, counted by hand from models/wideresnet_noise_conditional.py
# (blocks_per_group=4, channel_multiplier=10, num_outputs=10; kernels 3x3, no conv biases, GroupNorm scale+bias):
#   Fourier W 128; Dense 256->512 and 512->512: 131,584 + 262,656; init_conv 3*3*3*16 = 432
#   group 1 (160 ch): 335,872 (first block, 16 in) + 3 * 543,520
#   group 2 (320 ch): 1,547,520 + 3 * 2,008,640;  group 3 (640 ch): 5,859,840 + 3 * 7,703,680
#   (each block: 2 GroupNorms, 2 convs, Dense 512 -> C of the embedding); pre-pool GroupNorm 1,280; logits 6,410
ORIGINAL_WRN_28_10_PARAMS = 38_913_242

# --config overrides that make the CIFAR-10 classifier tiny: 8x8 images, WRN-10-1, two classes, VE up to sigma 1.
TINY = {
    "data.dataset": "npz", "data.image_size": 8, "data.random_flip": False,
    "classifier.blocks_per_group": 1, "classifier.channel_multiplier": 1, "classifier.num_classes": 2,
    "classifier.embedding_size": 8, "classifier.input_mean": (), "classifier.input_std": (),
    "model.sigma_max": 20, "model.ema_rate": 0.5,
    "training.batch_size": 16, "training.n_jitted_steps": 1, "training.n_iters": 20, "training.log_freq": 5,
    "training.eval_freq": 10, "training.snapshot_freq": 20, "training.snapshot_freq_for_preemption": 10,
    "optim.warmup": 0, "optim.lr": 3e-3, "eval.batch_size": 32, "eval.num_noise_bins": 2,
}


def _stripes(path, n: int = 64, labels: bool = True):
  """Separable 8x8 images: class 0 vertical stripes, class 1 horizontal ones, with pixel noise."""
  rng = np.random.default_rng(0)
  y = np.arange(n) % 2
  stripes = (np.arange(8) % 2).astype(np.float64)
  vertical = np.broadcast_to(stripes[None, :], (8, 8))
  pattern = np.where(y[:, None, None] == 0, vertical, vertical.T)  # [n, 8, 8]
  images = 64 + 128 * pattern[..., None] + rng.integers(0, 64, (n, 8, 8, 3))
  arrays = dict(images=images.astype(np.uint8))
  if labels:
    arrays["labels"] = y
  np.savez(path, **arrays)
  return path


def tiny_config(data, **overrides):
  config = configs_loader.load_config(CONFIG)
  for name, value in {**TINY, "data.root": str(data), **overrides}.items():
    section, field = name.split(".")
    config[section][field] = value
  return config


# ---- the full-size network and its config ---------------------------------------------------------------------


def test_config_documents_its_command_and_builds_the_original_wrn_28_10():
  docstring = ast.get_docstring(ast.parse(CONFIG.read_text()))
  assert f"python -m score_jax.main --config {CONFIG_PATH}" in docstring
  config = configs_loader.load_config(CONFIG)
  assert builders.is_classifier(config) and config.training.sde == "vesde" and config.seed == 42
  exp = pipeline.setup(config)  # shapes only
  assert exp.task == "classifier" and isinstance(exp.sde, sde_lib.VESDE)
  assert (exp.sde.sigma_min, exp.sde.sigma_max) == (0.01, 50)  # those of configs/ve/cifar10_ncsnpp_continuous.py
  assert isinstance(exp.model, wideresnet.WideResnet)
  assert wideresnet.wrn_depth(exp.model.blocks_per_group) == 28 and exp.model.channel_multiplier == 10
  assert exp.n_params == ORIGINAL_WRN_28_10_PARAMS
  params = exp.abstract_state.params
  assert sorted(params) == ["Dense_0", "Dense_1", "Dense_2", "GaussianFourierProjection_0", "WideResnetGroup_0",
                            "WideResnetGroup_1", "WideResnetGroup_2", "init_conv", "pre-pool-bn"]
  block = params["WideResnetGroup_2"]["WideResnetBlock_0"]
  assert block["conv1"]["kernel"].shape == (3, 3, 320, 640) and block["Dense_0"]["kernel"].shape == (512, 640)
  logits = jax.eval_shape(lambda p, x, s: exp.model.apply({"params": p}, x, s), params,
                          jax.ShapeDtypeStruct((5, 32, 32, 3), jnp.float32), jax.ShapeDtypeStruct((5,), jnp.float32))
  assert logits.shape == (5, 10)


# ---- training and evaluation through the pipeline ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("classifier")
  data = _stripes(root / "stripes.npz")
  config = tiny_config(data)
  workdir = root / "run"
  result = pipeline.train_and_evaluate(config, workdir, progress=False)
  return dict(workdir=workdir, data=data, config=config, result=result)


def test_training_lowers_the_cross_entropy(trained):
  result, workdir = trained["result"], trained["workdir"]
  assert result["step"] == 20 and not result["stopped_early"]
  log = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in log if "loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert losses[-1] < 0.8 * math.log(2) and losses[-1] < losses[0]  # below chance (log 2), and falling
  assert [r["step"] for r in log if "eval_loss" in r] == [10, 20]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [20]


def test_training_resumes_from_the_checkpoint(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained["workdir"], workdir)
  config = tiny_config(trained["data"], **{"training.n_iters": 25})
  result = pipeline.train_and_evaluate(config, workdir, progress=False)
  assert result["step"] == 25 and np.isfinite(result["loss"])
  log = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log if "loss" in r] == [5, 10, 15, 20, 25]  # appended after the first session's


def test_eval_reports_accuracy_above_chance_per_noise_bin(trained):
  result = pipeline.evaluate(trained["config"], trained["workdir"], progress=False)
  assert result["checkpoint"] == "step_20" and result["examples"] == 64
  assert result["accuracy"] > 0.75 and 0 < result["accuracy_se"] < 0.1 and np.isfinite(result["loss"])
  bins = result["bins"]
  assert len(bins) == 2 and sum(b["examples"] for b in bins) == 64
  assert bins[0]["t_min"] == pytest.approx(1e-5) and bins[1]["t_max"] == 1.0
  assert bins[0]["sigma_min"] == pytest.approx(0.01, rel=1e-3) and bins[1]["sigma_max"] == pytest.approx(20)
  assert bins[0]["accuracy"] >= bins[1]["accuracy"] - 0.1  # less noise is not harder
  written = json.loads((trained["workdir"] / "eval" / "step_20.json").read_text())
  assert written["accuracy"] == result["accuracy"]


def test_load_classifier_gives_a_log_prob_gradient(trained):
  model, variables, sde = pipeline.load_classifier(trained["config"], trained["workdir"])
  grad_fn = jax.jit(classifier.make_log_prob_grad_fn(model, variables, sde))
  x = jnp.full((2, 8, 8, 3), 0.5)  # a constant image: the per-image standardisation's std floor is active
  g = grad_fn(x, jnp.array([0.1, 0.9]), jnp.array([0, 1]))
  assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_sample_mode_refuses_a_classifier_config(trained):
  with pytest.raises(ValueError, match="needs a score-model config"):
    pipeline.sample(trained["config"], trained["workdir"], num_samples=1, progress=False)


# ---- bad input: clear errors before any training ---------------------------------------------------------------


def test_unknown_classifier_name(tmp_path):
  config = tiny_config(_stripes(tmp_path / "d.npz"), **{"classifier.name": "resnet9000"})
  with pytest.raises(ValueError, match="Unknown classifier.name 'resnet9000'.*wideresnet_noise_conditional"):
    pipeline.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()


def test_labels_outside_num_classes(tmp_path):
  data = tmp_path / "d.npz"
  rng = np.random.default_rng(0)
  np.savez(data, images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), labels=np.arange(16) % 10)
  with pytest.raises(ValueError, match=r"labels in \[0, 9\], outside \[0, classifier.num_classes=2\)"):
    pipeline.train_and_evaluate(tiny_config(data), tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()


def test_data_without_labels(tmp_path):
  config = tiny_config(_stripes(tmp_path / "d.npz", labels=False))
  with pytest.raises(ValueError, match="has no labels, which a classifier needs"):
    pipeline.train_and_evaluate(config, tmp_path / "run", progress=False)
  with pytest.raises(ValueError, match="has no labels"):
    pipeline.dry_run(config, trace_step=False)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, match", [
    ("classifier.input_mean", (0.5,), "must both be empty or both have data.num_channels=3"),
    ("classifier.num_classes", 1, "classifier.num_classes=1; expected an integer >= 2"),
    ("data.image_size", 6, "divisible by 4"),
    ("training.snapshot_sampling", True, "has no sampler"),
])
def test_bad_classifier_fields(tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    pipeline.setup(tiny_config(tmp_path / "unused.npz", **{field: value}))


# ---- the gradient of log p_t(y | x) --------------------------------------------------------------------------


class _Logistic(nn.Module):
  """logits = W vec(x) / sigma: its log-probability gradient is W^T (onehot(y) - softmax) / sigma."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, sigma, train=False):
    return nn.Dense(self.num_classes, use_bias=False)(x.reshape(x.shape[0], -1)) / sigma[:, None]


def test_log_prob_grad_matches_the_logistic_closed_form():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
  model = _Logistic()
  key_x, key_p = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(key_x, (4, 2, 2, 3))
  variables = model.init(key_p, x, jnp.ones(4))
  t, labels = jnp.array([0.0, 0.3, 0.6, 1.0]), jnp.array([0, 2, 1, 2])
  got = jax.jit(classifier.make_log_prob_grad_fn(model, variables, sde))(x, t, labels)
  w = variables["params"]["Dense_0"]["kernel"]  # [D, C]
  sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
  p = jax.nn.softmax(x.reshape(4, -1) @ w / sigma[:, None])
  want = ((jax.nn.one_hot(labels, 3) - p) @ w.T / sigma[:, None]).reshape(x.shape)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  log_p = classifier.make_log_prob_fn(model, variables, sde)(x, t, labels)
  np.testing.assert_allclose(log_p, jnp.log(p[jnp.arange(4), labels]), rtol=1e-5)


@pytest.mark.slow  # ~10 s of float64 compiles on 2 CPU cores; the logistic test above covers the helper
def test_log_prob_grad_of_the_wrn_matches_finite_differences():
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  model = wideresnet.WideResnet(blocks_per_group=1, channel_multiplier=1, num_outputs=4, embedding_size=4)
  with jax.enable_x64(True):  # the ReLU network bends within 1e-3: differences need small steps, so float64
    key_x, key_p, key_v = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.uniform(key_x, (2, 8, 8, 3), jnp.float64)
    variables = jax.jit(model.init)(key_p, x, jnp.ones(2, jnp.float64))  # eager init: 10 s of op-by-op dispatch
    t, labels = jnp.array([0.05, 0.5]), jnp.array([3, 1])
    grad = jax.jit(classifier.make_log_prob_grad_fn(model, variables, sde))(x, t, labels)
    log_p = jax.jit(classifier.make_log_prob_fn(model, variables, sde))
    v = jax.random.normal(key_v, x.shape, jnp.float64)
    h = 1e-6
    fd = (log_p(x + h * v, t, labels) - log_p(x - h * v, t, labels)) / (2 * h)  # [B] directional derivatives
    np.testing.assert_allclose(jnp.sum(grad * v, axis=(1, 2, 3)), fd, rtol=1e-6)


# ---- the launcher, end to end (slow: two subprocesses) ---------------------------------------------------------


@pytest.mark.slow
def test_launcher_trains_and_evaluates_a_classifier(tmp_path):
  data = _stripes(tmp_path / "stripes.npz")
  flags = [f"--config.{k}=" + (f"({','.join(map(str, v))},)" if v else "()") if isinstance(v, tuple) else
           f"--config.{k}={v}" for k, v in {**TINY, "data.root": str(data), "training.n_iters": 10}.items()]
  base = [sys.executable, "-m", "score_jax.main", f"--config={CONFIG}", f"--workdir={tmp_path / 'run'}",
          "--progress=false", *flags]
  out = subprocess.run(base + ["--mode=train"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  out = subprocess.run(base + ["--mode=eval"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout[out.stdout.index("{"):])
  assert result["checkpoint"] == "step_10" and 0 <= result["accuracy"] <= 1 and len(result["bins"]) == 2


@pytest.mark.slow
def test_class_conditional_sampling_from_files(trained, tmp_path):
  """python -m score_jax.controllable --task class on a 2-step tiny VE score model guided by the tiny classifier."""
  from helpers import tiny_config as tiny_score_config

  from score_jax import controllable

  score_config = tiny_score_config(trained["data"], **{"training.n_iters": 2, "training.snapshot_freq": 2,
                                                      "sampling.corrector": "none"})
  pipeline.train_and_evaluate(score_config, tmp_path / "score", progress=False)
  result = controllable.run_task(score_config, "class", tmp_path / "score", tmp_path / "out", labels="0,1,1",
                                 classifier_config=trained["config"], classifier_workdir=str(trained["workdir"]),
                                 scale=2.0, progress=False)
  assert result["num_images"] == 3
  with np.load(tmp_path / "out" / "class.npz") as f:
    assert f["samples"].shape == (3, 8, 8, 3) and f["labels"].tolist() == [0, 1, 1]
  with pytest.raises(ValueError, match=r"--labels must lie in \[0, 2\)"):
    controllable.run_task(score_config, "class", tmp_path / "score", tmp_path / "bad", labels="0,5",
                          classifier_config=trained["config"], classifier_workdir=str(trained["workdir"]),
                          progress=False)
