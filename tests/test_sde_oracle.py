"""Oracle tests of the forward SDEs: Euler-Maruyama simulation against the perturbation kernel.

For every SDE here ``dx = f(t) x dt + g(t) dw`` is linear, so ``x(t) | x(0)`` is Gaussian with the mean and
std that ``marginal_prob`` claims in closed form. Simulating the SDE from its drift and diffusion
(``sde.sde``) with many small Euler-Maruyama steps and many paths checks one against the other.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import sde_lib

SDES = {
    "vesde": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vpsde": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvpsde": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0),
}
X0 = np.array([1.5, -0.5], np.float32)  # the fixed starting point
N_PATHS = 10_000
N_STEPS = 2000  # dt = 5e-4: Euler-Maruyama's own bias stays below half a standard error (checked below)
CHECK_STEPS = np.array([500, 1000, 2000])  # t = 0.25, 0.5, 1 (earlier, VP/sub-VP's tiny std makes dt's bias
# show: at t = 0.1 sub-VP's variance is 0.86 SE off; test_marginal_prob_solves_the_moment_odes covers small t)
BIAS_MAX = 0.5  # discretisation bias allowed, in standard errors
Z_MAX = 4.0 + BIAS_MAX  # Monte-Carlo: 9 checks per SDE, P(|z| > 4) = 6e-5 each


def _scalars(sde, t):
  """``(f, g, a, s)`` at a scalar time: drift coefficient, diffusion, kernel mean factor and std."""
  t = jnp.asarray(t, jnp.float32)
  f, g = sde.sde_one(jnp.ones(()), t)
  a, s = sde.marginal_one(jnp.ones(()), t)
  return float(f), float(g), float(a), float(s)


def _start(sde):
  """The kernel at t = 0: ``x(0) ~ N(x0, s(0)^2)``. s(0) = 0 for VP/sub-VP; for VE it is sigma_min.

  VE's ``marginal_prob`` has std ``sigma(t)``, which is the law of ``x(t)`` when ``x(0)`` already carries
  noise of std ``sigma(0) = sigma_min`` (the paper's convention, p_0 ~ p_data for small sigma_min); from a
  noiseless x0 the VE SDE reaches variance ``sigma(t)^2 - sigma_min^2`` instead.
  """
  _, _, a0, s0 = _scalars(sde, 0.0)
  return a0 * X0, s0


def _simulate(sde, key, mean0, std0):
  """Euler-Maruyama paths ``x_{k+1} = x_k + f(x_k, t_k) dt + g(t_k) sqrt(dt) z_k`` from ``N(mean0, std0^2)``.

  Returns the paths at ``CHECK_STEPS``, ``[C, P, 2]``.
  """
  dt = sde.T / N_STEPS
  key0, key_steps = jax.random.split(key)
  x0 = jnp.asarray(mean0)[None] + std0 * jax.random.normal(key0, (N_PATHS, 2))
  checks = jnp.asarray(CHECK_STEPS)

  def step(carry, k):
    x, snaps = carry
    t = jnp.full((N_PATHS,), k * dt, jnp.float32)
    drift, diffusion = sde.sde(x, t)
    z = jax.random.normal(jax.random.fold_in(key_steps, k), x.shape)
    x = x + drift * dt + diffusion[:, None] * np.sqrt(dt) * z
    snaps = jnp.where((checks == k + 1)[:, None, None], x[None], snaps)
    return (x, snaps), None

  snaps0 = jnp.zeros((len(CHECK_STEPS), N_PATHS, 2))
  (_, snaps), _ = jax.lax.scan(step, (x0, snaps0), jnp.arange(N_STEPS))
  return snaps


def _euler_maruyama_moments(sde):
  """Exact mean factor and variance of the Euler-Maruyama chain itself at the check steps (float64).

  ``m_{k+1} = (1 + f_k dt) m_k`` and ``v_{k+1} = (1 + f_k dt)^2 v_k + g_k^2 dt``: what the simulation
  estimates, free of Monte-Carlo error, so its distance to the closed form is the discretisation bias.
  """
  dt = sde.T / N_STEPS
  t = jnp.arange(N_STEPS, dtype=jnp.float32) * dt
  f, g = jax.vmap(sde.sde_one)(jnp.ones(N_STEPS), t)
  f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
  _, s0 = _start(sde)
  m, v, out = 1.0, s0**2, {}
  for k in range(N_STEPS):
    m, v = (1 + f[k] * dt) * m, (1 + f[k] * dt) ** 2 * v + g[k] ** 2 * dt
    out[k + 1] = (m, v)
  return [out[int(c)] for c in CHECK_STEPS]


@pytest.mark.parametrize("name", sorted(SDES))
def test_euler_maruyama_matches_marginal_prob(name):
  sde = SDES[name]
  mean0, std0 = _start(sde)
  snaps = jax.jit(lambda key: _simulate(sde, key, mean0, std0))(jax.random.PRNGKey(0))
  snaps = np.asarray(snaps, np.float64)
  em_moments = _euler_maruyama_moments(sde)
  for c, step in enumerate(CHECK_STEPS):
    t = step * sde.T / N_STEPS
    mean, std = sde.marginal_prob(jnp.asarray(X0)[None], jnp.full((1,), t, jnp.float32))
    mean, var = np.asarray(mean[0], np.float64), float(std[0]) ** 2
    se_mean = np.sqrt(var / N_PATHS)
    se_var = var * np.sqrt(2.0 / (2 * N_PATHS - 2))  # pooled over the 2 independent coordinates
    # The chain's exact moments are within BIAS_MAX standard errors of the closed form ...
    em_mean_factor, em_var = em_moments[c]
    assert np.all(np.abs(em_mean_factor * X0 - mean) < BIAS_MAX * se_mean), (t, em_mean_factor, mean)
    assert abs(em_var - var) < BIAS_MAX * se_var, (t, em_var, var)
    # ... so the simulated paths must be within Z_MAX standard errors of it.
    x = snaps[c]
    sample_mean = x.mean(0)
    sample_var = np.mean(np.sum((x - sample_mean) ** 2, axis=0) / (N_PATHS - 1))
    assert np.all(np.abs(sample_mean - mean) < Z_MAX * se_mean), (name, t, sample_mean, mean, se_mean)
    assert abs(sample_var - var) < Z_MAX * se_var, (name, t, sample_var, var, se_var)


@pytest.mark.parametrize("name", sorted(SDES))
def test_marginal_prob_solves_the_moment_odes(name):
  """Sharper and noise-free: ``d mean / dt = f mean`` and ``d var / dt = 2 f var + g^2`` hold for the
  closed form. Central differences with h = 1e-3: truncation error ~h^2 (1e-5 relative here); the float32
  closed form adds ~6e-8 / h = 6e-5 relative to the scale of a and s^2, hence the absolute floors."""
  sde = SDES[name]
  h = 1e-3
  for t in (0.05, 0.3, 0.7, 0.95):
    f, g, a, s = _scalars(sde, t)
    _, _, a_plus, s_plus = _scalars(sde, t + h)
    _, _, a_minus, s_minus = _scalars(sde, t - h)
    da, dvar = (a_plus - a_minus) / (2 * h), (s_plus**2 - s_minus**2) / (2 * h)
    np.testing.assert_allclose(da, f * a, rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(dvar, 2 * f * s**2 + g**2, rtol=1e-3, atol=2e-4 * max(1.0, s**2))
