"""Item 10 of issue 16: every sampling method of an ablation starts from the same prior draws."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import ablate, sde_lib


def _config(method: str, **sampling) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      model=dict(num_scales=4), training=dict(continuous=True, sde="vesde"),
      sampling=dict(method=method, N=4, eps=1e-3, noise_removal=False, predictor="none", corrector="none", snr=0.16,
                    n_steps_each=1, probability_flow=False, snr_reduction="per_example", ode_rtol=1e-5,
                    ode_atol=1e-5, ode_solver="tsit5", ode_steps=0, schedule="uniform", eta=0.0, rho=7.0,
                    **sampling)))


def test_ode_and_pc_cells_start_from_the_same_prior_draws():
  # a zero score under VE: the probability-flow ODE does not move (drift -g^2/2 * 0), and a PC sampler with neither
  # predictor nor corrector returns its prior: both give their prior draws back
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=4)
  score_fn = lambda x, t: jnp.zeros_like(x)
  shape = (3, 2)
  key = jax.random.PRNGKey(7)
  ode = ablate.make_cell_sampler(_config("ode"), sde, score_fn, shape)
  pc = ablate.make_cell_sampler(_config("pc"), sde, score_fn, shape)
  for offset in (0, 5):
    x_ode, _ = jax.jit(ode)(key, offset)
    x_pc, _ = jax.jit(pc)(key, offset)
    np.testing.assert_allclose(np.asarray(x_ode), np.asarray(x_pc), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(x_pc), np.asarray(ablate.prior_draws(sde, key, offset, shape)), rtol=1e-6)
  # per example: sample 5 of a chunk starting at 5 is sample 5 of a chunk starting at 3
  a, _ = jax.jit(ode)(key, 5)
  b, _ = jax.jit(ode)(key, 3)
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[2]), rtol=1e-5)
