"""``sampling.method=edm`` / ``edm_ablation`` in the config-level sampler builder, and the sampler ablation.

The builder runs EDM's samplers on any score model through :func:`score_jax.edm.denoiser_from_score`, within the
model's noise range; with the exact score of the 2-D default it must give the mixture's moments, and
``score_jax.ablate`` must tabulate EDM-style comparisons of a trained 2-D model.
"""

import json

import jax
import ml_collections
import numpy as np
import pytest
from helpers import ROOT, SHARED
from oracles import MIXTURE, mixture_score_fn

from score_jax import builders, configs_loader, convert, edm, models

_log_prob = jax.jit(MIXTURE.log_prob)


@pytest.fixture(scope="module")
def truth():
  """Mean, variance and mean NLL of the 2-D default, from 50k exact samples."""
  true = np.asarray(MIXTURE.sample(jax.random.PRNGKey(1), 50_000))
  return true.mean(0), true.var(0), -float(np.mean(_log_prob(true)))


def _toy_config(**sampling):
  config = configs_loader.load_config(ROOT / "configs" / "toy" / "gmm2d.py")
  for key, value in sampling.items():
    config.sampling[key] = value
  return config


def test_settings_of_the_edm_methods():
  st = builders.sampler_settings(_toy_config(method="edm", S_churn=40.0, S_min=0.05, S_max=50.0))
  assert st["edm"] == dict(num_steps=18, rho=7.0, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.0,
                           edm_sigma_min=0.0, edm_sigma_max=0.0)
  st = builders.sampler_settings(_toy_config(method="edm_ablation", N=32, edm_solver="euler",
                                             edm_discretization="vp", edm_schedule="vp", edm_scaling="vp"))
  assert {k: st["edm"][k] for k in ("num_steps", "solver", "discretization", "schedule", "scaling")} == dict(
      num_steps=32, solver="euler", discretization="vp", schedule="vp", scaling="vp")
  # configs written before the EDM fields existed get EDM's defaults
  config = _toy_config(method="edm")
  for field in builders.EDM_SAMPLING_DEFAULTS:
    if field != "N":
      del config.sampling[field]
  assert builders.sampler_settings(config)["edm"]["S_max"] == float("inf")


@pytest.mark.parametrize("bad, match", [
    (dict(edm_solver="rk4"), "sampling.edm_solver='rk4'"),
    (dict(edm_discretization="ddim"), "sampling.edm_discretization"),
    (dict(S_churn=-1.0), "sampling.S_churn"),
    (dict(S_min=1.0, S_max=0.5), "sampling.S_max"),
    (dict(edm_sigma_min=1.0, edm_sigma_max=0.5), "edm_sigma_max"),
])
def test_bad_edm_settings_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    builders.sampler_settings(_toy_config(method="edm_ablation", **bad))


@pytest.mark.parametrize("method, sampling", [
    ("edm", dict(N=64)),
    ("edm", dict(N=128, S_churn=40.0, S_min=0.05, S_max=50.0)),  # the churn's bias falls slowly with N
    ("edm_ablation", dict(N=256, edm_solver="euler", edm_discretization="vp", edm_schedule="vp", edm_scaling="vp")),
], ids=["heun", "stochastic", "original_vp"])
def test_built_edm_samplers_sample_the_mixture(method, sampling, truth):
  """The exact VP score of the 2-D default through the builder: sample moments and NLL of the mixture."""
  config = _toy_config(method=method, **sampling)
  sde = builders.build_sde(config)
  fn = jax.jit(builders.build_sampler(config, sde, mixture_score_fn(sde), (4000, 2)))
  x, nfe = fn(jax.random.PRNGKey(0), 0)
  steps = sampling["N"]
  assert int(nfe) == edm.sampler_nfe(steps, sampling.get("edm_solver", "heun"))
  mean, var, nll_true = truth
  x = np.asarray(x)
  se = np.sqrt(var / len(x))
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4.5 * se + 0.01)
  np.testing.assert_allclose(x.var(0), var, rtol=0.06)
  nll = -float(np.mean(_log_prob(x)))
  assert abs(nll - nll_true) < 0.06, (nll, nll_true)
  if sampling.get("S_churn"):  # the samples do not depend on the batch they are drawn in
    x_half, _ = jax.jit(builders.build_sampler(config, sde, mixture_score_fn(sde), (2000, 2)))(
        jax.random.PRNGKey(0), 2000)
    np.testing.assert_allclose(x_half, x[2000:], rtol=1e-4, atol=1e-4)


# ---- a converted Score-SDE checkpoint sampled by Algorithm 2 ------------------------------------------------

JAX_FIX = SHARED / "fixtures" / "score_sde_jax"
TORCH_NETS = SHARED / "fixtures" / "score_sde_pytorch" / "networks"


@pytest.mark.slow  # ~3 min of NCSN++ compiles on 2 loaded cores; the builder's EDM path is covered above
def test_converted_score_sde_checkpoint_samples_with_edm():
  """The original score_sde (Flax) checkpoint of the small VE NCSN++ fixture, through ``convert``, sampled with
  ``sampling.method=edm`` (stochastic) and ``edm_ablation`` (the original VE sampler's settings)."""
  ckpt = JAX_FIX / "numeric" / "ncsnpp_ve_cont_small_checkpoint" / "checkpoint_2"
  config_file = TORCH_NETS / "ncsnpp_ve_cont_small.json"
  if not ckpt.exists() or not config_file.exists():
    pytest.skip(f"converted-checkpoint fixtures not found under {SHARED}; set SCORE_JAX_SHARED")
  cfg = json.loads(config_file.read_text())["config"]
  for field in ("ch_mult", "attn_resolutions", "fir_kernel"):
    if field in cfg["model"]:
      cfg["model"][field] = tuple(cfg["model"][field])
  config = ml_collections.ConfigDict(cfg)
  config.sampling.eps = 1e-3  # score_jax's field (the original hard-codes it); the EDM fields take their defaults
  variables = convert.load_score_sde_checkpoint(ckpt, config)
  sde, model = builders.build_sde(config), builders.build_model(config)
  score_fn = models.get_score_fn(sde, model, variables, continuous=True)
  d = config.data
  shape = (2, d.image_size, d.image_size, d.num_channels)
  for method, fields in (("edm", dict(N=4, S_churn=2.0)),
                         ("edm_ablation", dict(N=4, edm_solver="euler", edm_discretization="ve", edm_schedule="ve"))):
    config.sampling.method = method
    for key, value in fields.items():
      config.sampling[key] = value
    x, nfe = jax.jit(builders.build_sampler(config, sde, score_fn, shape))(jax.random.PRNGKey(0), 0)
    assert x.shape == shape and np.all(np.isfinite(np.asarray(x))), method
    assert int(nfe) == edm.sampler_nfe(4, fields.get("edm_solver", "heun"))


def test_edm_sampler_builds_inside_jit():
  """``pipeline.make_sample_fn`` builds the sampler while tracing: the model's noise range must stay concrete."""
  config = _toy_config(method="edm", N=3)
  sde = builders.build_sde(config)
  fn = jax.jit(lambda key: builders.build_sampler(config, sde, mixture_score_fn(sde), (8, 2))(key, 0))
  x, nfe = fn(jax.random.PRNGKey(0))
  assert x.shape == (8, 2) and int(nfe) == 5 and np.all(np.isfinite(np.asarray(x)))
