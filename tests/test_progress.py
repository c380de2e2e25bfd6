"""Progress inside one jitted call (score_jax.progress): the bar counts the network evaluations as they happen,
and the values computed are the same with and without it (up to float rounding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT

from score_jax import builders, configs_loader, likelihood, progress, sde_lib


def _score(x, t):  # the exact score of N(0, I) data under the VE SDE below: -x / (1 + sigma(t)^2)
  sigma = SDE.marginal_prob(jnp.zeros_like(x), t)[1]
  return -x / (1.0 + sigma[:, None] ** 2)


SDE = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=50)


def _config(method, **fields):
  config = configs_loader.load_config(ROOT / "configs/ve/cifar10_ncsnpp_continuous.py")
  config.model.num_scales = 50
  config.sampling.method = method
  for name, value in fields.items():
    config.sampling[name] = value
  return config


@pytest.mark.parametrize("method, fields", [("pc", {}), ("heun", {"N": 12}), ("edm", {"N": 8}),
                                            ("ode", {"ode_rtol": 1e-3, "ode_atol": 1e-3})])
def test_the_bar_counts_every_evaluation_and_changes_nothing(method, fields):
  config = _config(method, **fields)
  shape = (16, 2)
  plain = jax.jit(builders.build_sampler(config, SDE, _score, shape))
  counted = jax.jit(builders.build_sampler(config, SDE, progress.count_calls(_score), shape))
  key = jax.random.PRNGKey(0)
  x0, nfe0 = plain(key, 0)
  with progress.bar("test", enabled=True) as bar:
    x1, nfe1 = counted(key, 0)
    x1 = np.asarray(x1)
  # the same samples up to float rounding: XLA may fuse the program around the callbacks differently (measured:
  # 2e-6 relative after this 50-step PC sampler's 100 evaluations; bit-identical for heun, edm and ode here)
  np.testing.assert_allclose(x0, x1, rtol=1e-5, atol=1e-6)
  assert int(nfe0) == int(nfe1) > 0
  assert bar.n == int(nfe1), (bar.n, int(nfe1))
  with progress.bar("off", enabled=False) as off:  # a disabled bar: nothing counted, nothing shown
    counted(key, 0)
  assert off is None


def test_bits_per_dim_counts_the_drift_evaluations_of_its_ode():
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 2))
  key = jax.random.PRNGKey(2)
  fn = lambda score: jax.jit(lambda x: likelihood.bits_per_dim(key, SDE, score, x, rtol=1e-3, atol=1e-3))(x)
  bpd0, _, nfe0 = fn(_score)
  with progress.bar("bits/dim", enabled=True) as bar:
    bpd1, _, nfe1 = fn(progress.count_calls(_score))
    bpd1 = np.asarray(bpd1)
  np.testing.assert_allclose(bpd0, bpd1, rtol=1e-6)
  assert int(nfe0) == int(nfe1) and bar.n >= int(nfe1) > 0  # one evaluation per drift (plus the solver's first)
