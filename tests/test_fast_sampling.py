"""Oracle tests of the fast samplers (DDIM, DPM-Solver++(2M), EDM's Heun) with exact scores.

Convergence: with the exact score the samplers discretise the probability-flow ODE, so as the number of
steps doubles their distance to a tight adaptive solve of that ODE (float64) must shrink by 2^order: DDIM
first order, DPM-Solver++(2M) and Heun second order (slope within 0.3). Distribution: their samples match
the moments of the exact target (the 4-D product of a Gaussian and the 2-D mixture of test_sampling_oracle),
DDIM with eta = 1 included, which follows the reverse SDE rather than the ODE.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import (
  BATCH,
  MIXTURE,
  SDE_NAMES,
  TAU,
  assert_matches_target,
  evaluation_counter,
  gaussian_score_fn,
  make_sde,
  product_score_fn,
  reference_statistics,
  sample_product,
)

from score_jax import builders, configs_loader, fast_sampling, sampling

METHODS = ("ddim", "dpm_solver", "heun")
ORDER = {"ddim": 1, "dpm_solver": 2, "heun": 2}


@pytest.fixture(scope="module")
def reference():
  return reference_statistics()


def test_noise_to_signal_round_trip():
  """``time_of_noise_to_signal`` inverts ``noise_to_signal`` on [eps, T] for every SDE."""
  t = jnp.linspace(1e-3, 1.0, 50)
  for name in SDE_NAMES:
    sde = make_sde(name, 100)
    np.testing.assert_allclose(sde.time_of_noise_to_signal(sde.noise_to_signal(t)), t, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("schedule", fast_sampling.SCHEDULES)
def test_time_steps_run_from_T_to_eps_decreasing(schedule):
  for name in SDE_NAMES:
    ts = np.asarray(fast_sampling.time_steps(make_sde(name, 100), 10, schedule, eps=1e-3))
    assert ts.shape == (11,) and ts[0] == 1.0 and abs(ts[-1] - 1e-3) < 1e-9 + 1e-7 and np.all(np.diff(ts) < 0), ts


def _slope(method, sde, score_fn, z, ns, exact, **kwargs):
  fn = jax.jit(lambda z, n: fast_sampling.fast_sample(method, None, sde, score_fn, z.shape, steps=n, z=z,
                                                      **kwargs)[0], static_argnums=1)
  errors = [float(jnp.sqrt(jnp.mean((fn(z, n) - exact) ** 2))) for n in ns]
  return np.polyfit(np.log(ns), np.log(errors), 1)[0] * -1, errors


def _exact_ode(sde, score_fn, z):
  return sampling.ode_sample(None, sde, score_fn, z.shape, z=z * sde.prior_std(), rtol=1e-10, atol=1e-10)[0]


@pytest.mark.parametrize("sde_name", ["vpsde", pytest.param("vesde", marks=pytest.mark.slow),
                                      pytest.param("subvpsde", marks=pytest.mark.slow)])
def test_convergence_order_on_gaussian_data(sde_name):
  """Gaussian data (exact score): slopes of log error vs log steps are 1 (DDIM) and 2 (the others)."""
  with jax.enable_x64(True):
    sde = make_sde(sde_name, 1000)
    score_fn = gaussian_score_fn(sde)
    z = jax.random.normal(jax.random.PRNGKey(0), (8, 2), jnp.float64)
    exact = _exact_ode(sde, score_fn, z)
    for method in METHODS:
      slope, errors = _slope(method, sde, score_fn, z, (16, 32, 64), exact)
      assert abs(slope - ORDER[method]) < 0.3, (method, errors, slope)


def _mixture_convergence(sde_name, methods):
  with jax.enable_x64(True):
    sde = make_sde(sde_name, 1000)
    score_fn = MIXTURE.score_fn(sde)
    z = jax.random.normal(jax.random.PRNGKey(3), (16, 2), jnp.float64)
    exact = _exact_ode(sde, score_fn, z)
    for method in methods:
      # DDIM reaches its asymptotic regime late on the mixture (coarse steps send points to other modes).
      ns = (256, 512, 1024) if method == "ddim" else (64, 128, 256)
      slope, errors = _slope(method, sde, score_fn, z, ns, exact)
      assert abs(slope - ORDER[method]) < 0.3, (method, errors, slope)
      assert errors[-1] < 0.01, (method, errors)


def test_convergence_order_on_mixture_data():
  """2-D mixture (exact score), VP: the same orders (all three SDEs with SCORE_JAX_SLOW=1)."""
  _mixture_convergence("vpsde", METHODS)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vesde", "subvpsde"])
def test_convergence_order_on_mixture_data_all_sdes(sde_name):
  _mixture_convergence(sde_name, METHODS)


# Sampler settings for the distribution check and the systematic error each is allowed (relative to the
# statistic's RMS, as in test_sampling_oracle). The discretisation bias shows in the spread: on the
# Gaussian block (variance 0.25) Heun gives 0.280 / 0.255 / 0.252 at 18 / 50 / 200 steps on VP, DDIM
# 0.184 / 0.225 / 0.245 (measured with 20k samples), so the steps here keep it near 2%.
DISTRIBUTION_CASES = {
    "ddim": (dict(steps=200), 0.02),
    "ddim_eta1": (dict(steps=200, eta=1.0), 0.02),
    "dpm_solver": (dict(steps=50), 0.02),
    "heun": (dict(steps=50), 0.02),
}


@pytest.mark.parametrize("case", sorted(DISTRIBUTION_CASES))
@pytest.mark.parametrize("sde_name", ["vpsde", pytest.param("vesde", marks=pytest.mark.slow),
                                      pytest.param("subvpsde", marks=pytest.mark.slow)])
def test_samples_match_target(sde_name, case, reference):
  """Starting from exact samples of p_T, the samples match the target's moments and mode weights."""
  sde = make_sde(sde_name, 1000)
  kwargs, delta = DISTRIBUTION_CASES[case]
  method = case.split("_eta")[0]
  x_T = sample_product(jax.random.PRNGKey(3), BATCH, sde)
  x, nfe = jax.jit(lambda z, k: fast_sampling.fast_sample(method, k, sde, product_score_fn(sde), (BATCH, 4),
                                                          z=z / sde.prior_std(), **kwargs))(x_T, jax.random.PRNGKey(4))
  assert nfe == fast_sampling.fast_nfe(method, kwargs["steps"])
  assert_matches_target(x, reference, delta, f"{sde_name} {case}")


@pytest.mark.parametrize("method", METHODS)
def test_nfe_counts_score_evaluations(method):
  sde = make_sde("vpsde", 100)
  tick, counter = evaluation_counter()
  exact = gaussian_score_fn(sde)

  def score_fn(x, t):
    tick()
    return exact(x, t)

  for denoise in (False, True):
    counter[0] = 0
    x, nfe = fast_sampling.fast_sample(method, jax.random.PRNGKey(0), sde, score_fn, (3, 2), steps=5,
                                       denoise=denoise)
    jax.block_until_ready(x)
    assert nfe == counter[0] == fast_sampling.fast_nfe(method, 5, denoise)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _ddim_small(batch, offset):
  sde = make_sde("vesde", 100)
  return fast_sampling.fast_sample("ddim", jax.random.PRNGKey(7), sde, gaussian_score_fn(sde), (batch, 2),
                                   steps=6, eta=0.7, sample_offset=offset)[0]


def test_samples_do_not_depend_on_the_batch():
  """Per-example keys: example ``b`` is the same drawn alone, in a batch of 6, or at an offset."""
  full = np.asarray(_ddim_small(6, 0))
  np.testing.assert_allclose(np.asarray(_ddim_small(2, 3)), full[3:5], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(_ddim_small(1, 5)), full[5:], rtol=1e-6, atol=1e-6)


def test_same_prior_draw_as_the_pc_sampler():
  """With no steps of drift (a zero score), every sampler's start is the PC sampler's prior draw."""
  sde = make_sde("vesde", 10)
  key = jax.random.PRNGKey(11)
  zero = lambda x, t: jnp.zeros_like(x)
  prior, _ = sampling.pc_sample(key, sde, zero, (4, 2), predictor="none", corrector="none", denoise=False)
  x, _ = fast_sampling.fast_sample("ddim", key, sde, zero, (4, 2), steps=3)
  np.testing.assert_allclose(np.asarray(x), np.asarray(prior), rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="dpm"), "Unknown fast sampler 'dpm'; expected one of ['ddim', 'dpm_solver', 'heun']"),
    (dict(schedule="cosine"), "Unknown time-step schedule 'cosine'; expected one of"),
    (dict(steps=0), "the number of sampler steps must be an integer >= 1, got 0"),
    (dict(steps=2.5), "the number of sampler steps must be an integer >= 1, got 2.5"),
    (dict(eta=-1.0), "eta must be a finite number >= 0, got -1.0"),
    (dict(method="heun", eta=0.5), "eta=0.5 is DDIM's stochasticity; sampler 'heun' is deterministic"),
    (dict(eps=0.0), "eps must lie in (0, T) = (0, 1.0), got 0.0"),
    (dict(z=jnp.zeros((3, 2))), "z (prior draw) noise must have shape (4, 2), got (3, 2)"),
])
def test_bad_input(kwargs, message):
  args = dict(method="ddim", steps=4)
  args.update(kwargs)
  method = args.pop("method")

  def never_called(x, t):
    raise AssertionError("the score must not be evaluated")

  with pytest.raises(ValueError) as info:
    fast_sampling.fast_sample(method, jax.random.PRNGKey(0), make_sde("vpsde", 10), never_called, (4, 2), **args)
  assert message in str(info.value)


TOY = configs_loader.load_config(pathlib.Path(__file__).parents[1] / "configs" / "toy" / "gmm2d.py")


@pytest.mark.parametrize("overrides,message", [
    ({"method": "ddpm"},
     "sampling.method='ddpm'; expected one of ['pc', 'ode', 'ddim', 'dpm_solver', 'heun', 'edm', 'edm_ablation']"),
    ({"method": "ddim", "schedule": "cosine"}, "sampling.schedule='cosine'; expected one of"),
    ({"method": "heun", "eta": 0.5}, "sampling.eta=0.5 is DDIM's stochasticity; sampling.method='heun'"),
    ({"method": "ddim", "N": -2}, "sampling.N=-2; expected an integer >= 0"),
    ({"method": "ode", "ode_solver": "rk4"}, "sampling.ode_solver='rk4', sampling.ode_steps=0: Unknown ODE solver"),
    ({"method": "ode", "ode_solver": "euler"}, "'euler' has no error estimate"),
    ({"method": "pc", "predictor": "heun"}, "Unknown predictor 'heun'"),
    ({"method": "pc", "n_steps_each": -1}, "n_steps_each=-1; expected an integer >= 0"),
    ({"method": "pc", "N": 10}, "sampling.N=10 is too few steps for the PC sampler under vpsde"),
])
def test_bad_sampler_settings_name_the_field(overrides, message):
  """(Values of the wrong type are refused by ml_collections itself when the field is set.)"""
  config = TOY.copy_and_resolve_references()
  for name, value in overrides.items():
    config.sampling[name] = value
  with pytest.raises(ValueError) as info:
    builders.sampler_settings(config)
  assert message in str(info.value)


def test_discrete_model_keeps_its_noise_levels():
  config = TOY.copy_and_resolve_references()
  config.training.continuous, config.sampling.N = False, 10
  with pytest.raises(ValueError, match="sampling.N=10 differs from model.num_scales=1000"):
    builders.sampler_settings(config)


@pytest.mark.parametrize("method", builders.SAMPLING_METHODS)
def test_build_sampler_runs_every_method_with_its_nfe(method):
  """The config-level sampler: shapes, finite samples, and the NFE each method reports."""
  config = TOY.copy_and_resolve_references()
  # VP's DDPM betas need N > beta_max = 20 steps to stay below 1 (the PC predictor uses them).
  config.sampling.method, config.sampling.N = method, 25 if method == "pc" else 4
  sde = builders.build_sde(config)
  sample = builders.build_sampler(config, sde, gaussian_score_fn(sde), (3, 2))
  x, nfe = jax.jit(sample)(jax.random.PRNGKey(0), 0)
  assert x.shape == (3, 2) and np.all(np.isfinite(np.asarray(x)))
  expected = {"pc": 25 * 2, "ddim": 5, "dpm_solver": 5, "heun": 9, "edm": 7, "edm_ablation": 7}  # edm: 2N - 1
  if method == "ode":
    assert int(nfe) > 7
  else:
    assert int(nfe) == expected[method]


@pytest.mark.parametrize("method", METHODS)
def test_clip_denoised_is_inactive_inside_the_range_and_bounds_every_output(method):
  """``clip_denoised``: with the exact score of N(0, tau^2) data (tau = 0.5) every denoised estimate lies inside
  [-8 tau, 8 tau] (|D| <= |y| tau^2 / (tau^2 + sigma^2); P(|x| > 8 tau) ~ 1e-15), so clipping there changes
  nothing, bit for bit; a narrower range is applied to every output. (Why it exists, an epsilon-network early in
  training whose D is off by sigma times its noise error, is measured on CIFAR-10 in docs/reproduce.md.)"""
  sde = make_sde("vpsde", 1000)
  z = jax.random.normal(jax.random.PRNGKey(3), (BATCH, 2))
  exact = gaussian_score_fn(sde)
  run = lambda score, clip: fast_sampling.fast_sample(method, None, sde, score, (BATCH, 2), steps=20, z=z,
                                                      denoise=True, clip_denoised=clip)[0]
  np.testing.assert_array_equal(run(exact, None), run(exact, (-8 * TAU, 8 * TAU)))
  # the same data clipped to [-tau, tau]: active (a third of N(0, tau^2) lies outside), every output inside
  loose, clipped = np.asarray(run(exact, None)), np.asarray(run(exact, (-TAU, TAU)))
  assert np.mean(np.abs(loose) > TAU) > 0.25 and np.abs(clipped).max() <= TAU
  inside = np.all(np.abs(loose) < 0.5 * TAU, axis=1)  # samples well inside move little
  assert np.median(np.abs(clipped[inside] - loose[inside])) < 0.1 * TAU
  with pytest.raises(ValueError, match="low < high"):
    run(exact, (1.0, -1.0))


def test_clip_denoised_setting_is_checked_and_follows_the_data_range():
  config = configs_loader.load_config(pathlib.Path(__file__).parents[1] / "configs" / "cpu" / "cifar10_ddpmpp.py")
  assert config.sampling.clip_denoised is True  # the CPU recipe needs it (README)
  config.sampling.clip_denoised = False
  assert builders.sampler_settings(config)["clip_denoised"] is None
  config.sampling.clip_denoised = True
  assert builders.sampler_settings(config)["clip_denoised"] == (-1.0, 1.0)  # data.centered=True
  config.data.centered = False
  assert builders.sampler_settings(config)["clip_denoised"] == (0.0, 1.0)
  config.sampling.method, config.sampling.N = "pc", 100
  with pytest.raises(ValueError, match="sampling.clip_denoised=True applies to the fast samplers"):
    builders.sampler_settings(config)
  toy = TOY.copy_and_resolve_references()
  toy.sampling.method = "ddim"
  toy.sampling.clip_denoised = True
  with pytest.raises(ValueError, match="needs image data"):
    builders.sampler_settings(toy)
