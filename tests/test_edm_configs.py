"""configs/edm/: EDM's training recipe through the launcher (dry validation, a tiny train step, and, slow, a short
CIFAR-10 run whose model then samples with every sampler)."""

import ast
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, SHARED, experiment
from test_configs import SCORE_JAX_FIELDS

from score_jax import builders, configs_loader, edm_net, pipeline, train

EDM_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "edm").glob("*.py")
                     if p.name != "__init__.py")
CIFAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
# A tiny DDPM++ at 8x8 (compiles in seconds); data.root is set by the test.
TINY = {"data.dataset": "npz", "data.image_size": 8, "model.nf": 8, "model.ch_mult": (1, 2),
        "model.num_res_blocks": 1, "model.attn_resolutions": (4,), "model.dropout": 0.0, "training.batch_size": 4,
        "training.n_jitted_steps": 1, "training.n_iters": 4, "training.log_freq": 1, "training.eval_freq": 0,
        "training.snapshot_freq": 4, "training.snapshot_freq_for_preemption": 2, "training.snapshot_sampling": False,
        "eval.batch_size": 4, "optim.warmup": 0, "model.ema_halflife_kimg": 0.5}


def _config(path, **overrides):
  config = configs_loader.load_config(ROOT / path)
  for name, value in overrides.items():
    section, field = name.split(".")
    config[section][field] = value
  return config


def test_edm_configs_exist():
  assert {"configs/edm/cifar10_ddpmpp_edm.py", "configs/edm/cifar10_ddpmpp_edm_cond.py"} <= set(EDM_CONFIGS)


@pytest.mark.parametrize("path", EDM_CONFIGS)
def test_edm_config_loads_documents_and_passes_dry_validation(path):
  config = _config(path)
  for name in SCORE_JAX_FIELDS:
    section, field = name.split(".")
    assert section in config and field in config[section], name
  docstring = ast.get_docstring(ast.parse((ROOT / path).read_text()))
  assert f"python -m score_jax.main --config {path}" in docstring and "FID" in docstring
  summary = pipeline.dry_run(config, check_data=False, trace_step=False, exp=experiment(path))
  assert 50e6 < summary["n_params"] < 60e6  # EDM's DDPM++ for CIFAR-10 has 56M parameters
  assert isinstance(experiment(path).model, edm_net.EDMPrecond)


def test_edm_fields_are_checked():
  base = "configs/edm/cifar10_ddpmpp_edm.py"
  with pytest.raises(ValueError, match="training.sde='vesde'"):
    builders.build_model(_config(base, **{"training.sde": "vpsde"}))
  with pytest.raises(ValueError, match="scale_by_sigma=False"):
    builders.build_model(_config(base, **{"model.scale_by_sigma": True}))
  bad = _config(base)
  bad.edm.P_meen = 0.0
  with pytest.raises(ValueError, match="edm.P_meen"):
    builders.build_model(bad)


class _TinyNet(nn.Module):
  """A stand-in for DDPM++ (one convolution conditioned on its label) so that the step compiles in seconds."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    h = nn.Conv(x.shape[-1], (3, 3))(x)
    return h * (1 + nn.Dense(1)(labels[:, None].astype(x.dtype)))[:, :, None, None]


def _edm_step(model, config):
  sde, optimizer = builders.build_sde(config), builders.build_optimizer(config)
  state = train.init_train_state(jax.random.PRNGKey(0), config, model, optimizer)
  return state, jax.jit(train.make_train_step(config, model, sde, optimizer))


def _check_two_steps(model, config):
  """Two EDM training steps: finite losses, EDM's EMA ramp-up (the average is the weights after step 1, not
  after step 2), and the network a score model of the VE SDE, ``(D - x) / sigma^2``."""
  state, step = _edm_step(model, config)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3), minval=-1.0, maxval=1.0)
  state, metrics = step(state, x, jax.random.PRNGKey(2))
  leaves = lambda tree: jax.tree_util.tree_leaves(tree)
  assert all(np.array_equal(e, p) for e, p in zip(leaves(state.ema_params), leaves(state.params)))
  state, metrics2 = step(state, x, jax.random.PRNGKey(2))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics2["loss"]))
  assert any(not np.array_equal(e, p) for e, p in zip(leaves(state.ema_params), leaves(state.params)))
  sigma = jnp.full((4,), 0.7)
  score = jax.jit(model.apply)({"params": state.params}, x, sigma)
  D = jax.jit(model.clone(output="denoised").apply)({"params": state.params}, x, sigma)
  np.testing.assert_allclose(score, (D - x) / 0.49, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # compiles a DDPM++ train step (~12 s); EDM's losses and EMA have fast unit tests
def test_edm_train_step_loss_and_ema():
  config = _config("configs/edm/cifar10_ddpmpp_edm.py", **TINY)
  model = edm_net.EDMPrecond(inner=_TinyNet(), kind="edm", precond_params=(("sigma_data", 0.5),))
  _check_two_steps(model, config)
  # the loss of the step is EDM's: sum over each image of edm.loss on the model's denoiser
  loss_fn = train.make_loss_fn(config, model, builders.build_sde(config), train=False, per_example=True)
  state, _ = _edm_step(model, config)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3), minval=-1.0, maxval=1.0)
  losses = jax.jit(loss_fn)(state.params, x, jax.random.PRNGKey(3))
  assert losses.shape == (4,) and np.all(np.asarray(losses) > 0)
  # EDM sums each image's per-element loss (training.reduce_mean=False); reduce_mean averages the same draws
  config.training.reduce_mean = True
  mean_fn = train.make_loss_fn(config, model, builders.build_sde(config), train=False, per_example=True)
  np.testing.assert_allclose(jax.jit(mean_fn)(state.params, x, jax.random.PRNGKey(3)) * x[0].size, losses,
                             rtol=1e-5)


@pytest.mark.slow  # ~2.5 min of compiles on 2 loaded cores
def test_tiny_ddpmpp_edm_train_step():
  config = _config("configs/edm/cifar10_ddpmpp_edm.py", **TINY)
  _check_two_steps(builders.build_model(config), config)


# ---- a short run on the CIFAR-10 JPEG archive (slow) -----------------------------------------------------------

SAMPLERS = {
    "pc": {"sampling.method": "pc", "sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin",
           "sampling.N": 100},
    "ode": {"sampling.method": "ode", "sampling.ode_rtol": 1e-3, "sampling.ode_atol": 1e-3},
    "ddim": {"sampling.method": "ddim", "sampling.N": 20},
    "dpm_solver": {"sampling.method": "dpm_solver", "sampling.N": 20},
    "heun": {"sampling.method": "heun", "sampling.N": 18},
    "edm": {"sampling.method": "edm", "sampling.N": 18},
    "edm_stochastic": {"sampling.method": "edm", "sampling.N": 18, "sampling.S_churn": 10.0, "sampling.S_min": 0.05,
                       "sampling.S_max": 50.0},
    "edm_ablation": {"sampling.method": "edm_ablation", "sampling.N": 18},
}


@pytest.mark.slow
def test_short_edm_run_on_cifar10(tmp_path):
  """A small DDPM++ trained with EDM's loss through the launcher on the CIFAR-10 archive: the loss falls, a grid
  is written, and the model samples with every sampler."""
  if not CIFAR.exists():
    pytest.skip(f"{CIFAR} not found (../shared is absent); set SCORE_JAX_SHARED")
  overrides = {**TINY, "data.dataset": "folder", "data.root": str(CIFAR), "data.image_size": 32, "model.nf": 16,
               "model.attn_resolutions": (16,), "training.batch_size": 16, "training.n_iters": 300,
               "training.log_freq": 25, "training.snapshot_freq": 300, "training.snapshot_freq_for_preemption": 100,
               "model.ema_halflife_kimg": 0.5, "eval.batch_size": 16}
  config = _config("configs/edm/cifar10_ddpmpp_edm.py", **overrides)
  result = pipeline.train_and_evaluate(config, tmp_path, progress=False)
  losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
  assert result["step"] == 300 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
  out = pipeline.sample(config, tmp_path, num_samples=16, progress=False)
  assert (pathlib.Path(out["directory"]) / "grid.png").exists()
  for name, sampling in SAMPLERS.items():  # each in its own run directory holding the trained checkpoints
    workdir = tmp_path / "samplers" / name
    shutil.copytree(tmp_path / "checkpoints", workdir / "checkpoints")
    config = _config("configs/edm/cifar10_ddpmpp_edm.py", **overrides, **sampling)
    out = pipeline.sample(config, workdir, num_samples=4, progress=False)
    with np.load(sorted(pathlib.Path(out["directory"]).glob("samples_*.npz"))[0]) as f:
      images = f["images"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8, name
    assert 0 < images.std(), f"{name}: constant samples"


class _LabelEcho(nn.Module):
  """Returns its label broadcast over the image: what the inner network of EDMPrecond is fed."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    return jnp.broadcast_to(labels[:, None, None, None], x.shape)


@pytest.mark.parametrize("label_mode", ["positional", "fourier"])
def test_precond_feeds_the_inner_network_c_noise(label_mode):
  """DDPM++ embeds its label (gets c_noise); NCSN++'s Fourier embedding takes log(label) (gets exp(c_noise))."""
  from score_jax import edm

  model = edm_net.EDMPrecond(inner=_LabelEcho(), kind="ve", label_mode=label_mode, output="denoised")
  x, sigma = jnp.zeros((3, 2, 2, 1)), jnp.array([0.1, 1.0, 10.0])
  D = model.apply({}, x, sigma)  # x = 0: D = c_out F(0, c_noise)
  c_skip, c_out, c_in, c_noise = edm.precond_coefficients("ve", sigma)
  label = jnp.exp(c_noise) if label_mode == "fourier" else c_noise
  np.testing.assert_allclose(D[:, 0, 0, 0], c_out * label, rtol=1e-6)


@pytest.mark.parametrize("loss", ["edm_vp", "edm_ve"])
def test_edm_vp_and_ve_losses_train(loss):
  """EDM's VP and VE losses and preconditionings through train.make_loss_fn, with their edm.* parameters."""
  config = _config("configs/edm/cifar10_ddpmpp_edm.py", **TINY, **{"training.loss": loss})
  config.edm.beta_d, config.edm.sigma_max = 19.9, 100.0
  settings = builders.edm_settings(config)
  assert settings["kind"] == loss[4:] and ("beta_d" in settings["loss"]) == (loss == "edm_vp")
  model = edm_net.EDMPrecond(inner=_TinyNet(), kind=settings["kind"],
                             precond_params=tuple(sorted(settings["precond"].items())))
  state, _ = _edm_step(model, config)
  loss_fn = jax.jit(train.make_loss_fn(config, model, builders.build_sde(config), train=False, per_example=True))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3), minval=-1.0, maxval=1.0)
  losses = np.asarray(loss_fn(state.params, x, jax.random.PRNGKey(3)))
  assert losses.shape == (4,) and np.all(np.isfinite(losses)) and np.all(losses > 0)
