"""Oracle tests of the probability-flow likelihood against the exact log-density of a Gaussian mixture.

The mixture's ``p_t`` is a mixture again under every SDE (``gmm``), so ``log p_eps(x)`` is exact. With the
exact score, the probability-flow ODE transports ``p_eps`` onto ``p_T`` exactly, so ``log_likelihood`` with
``prior_logp_fn = log p_T`` must return ``log p_eps(x)`` up to the ODE solver's error (rtol = atol = 1e-5).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import gmm, likelihood, sde_lib

MIXTURE = gmm.default_mixture()
SDES = {
    # sigma_max = 10 >> the mixture's radius 3, yet p_T = mixture * N(0, 10^2) is not the N(0, 10^2) prior
    "vesde": sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0),
    "vpsde": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvpsde": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0),
}
EPS = 1e-5  # log_likelihood's default start time
REL_TOL = 1e-3


def _points():
  """Six mixture samples and two points off the data (between modes, in the tail)."""
  x = MIXTURE.sample(jax.random.PRNGKey(0), 6)
  return jnp.concatenate([x, jnp.array([[0.0, 1.5], [4.0, -3.0]], jnp.float32)])


def exact_log_prob(sde, x, t):
  return MIXTURE.marginal_log_prob(sde, x, jnp.full((x.shape[0],), t, jnp.float32))


@functools.lru_cache(maxsize=None)
def exact_divergence_run(sde_name):
  """``(x, logp, z)``: exact-divergence log-likelihood of ``_points()`` with the exact ``log p_T``."""
  sde = SDES[sde_name]
  x = _points()
  logp, z, _ = jax.jit(lambda x: likelihood.log_likelihood(
      None, sde, MIXTURE.score_fn(sde), x, divergence="exact",
      prior_logp_fn=lambda z: exact_log_prob(sde, z, sde.T)))(x)
  return x, np.asarray(logp, np.float64), z


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_divergence_log_likelihood_is_the_exact_log_density(sde_name):
  sde = SDES[sde_name]
  x, logp, z = exact_divergence_run(sde_name)
  expected = np.asarray(exact_log_prob(sde, x, EPS), np.float64)
  np.testing.assert_allclose(logp, expected, rtol=REL_TOL)
  # The latent is where the exact flow sends x: p_T there is the prior's for VP and sub-VP (a(1) = 0.0066),
  # but not for VE, whose p_T has variance 10^2 + 3.6 per dimension against the prior's 10^2.
  with_prior = logp - np.asarray(exact_log_prob(sde, z, sde.T)) + np.asarray(sde.prior_logp(z))
  if sde_name == "vesde":
    assert np.max(np.abs(with_prior - expected) / np.abs(expected)) > 10 * REL_TOL
  else:
    np.testing.assert_allclose(with_prior, expected, rtol=REL_TOL)


def test_vp_log_likelihood_with_the_default_prior():
  sde = SDES["vpsde"]
  x = _points()
  logp, _, nfe = likelihood.log_likelihood(None, sde, MIXTURE.score_fn(sde), x, divergence="exact")
  np.testing.assert_allclose(logp, exact_log_prob(sde, x, EPS), rtol=REL_TOL)
  assert 0 < int(nfe) < 10_000


@pytest.mark.parametrize("sde_name", ["vesde", "vpsde"])
@pytest.mark.parametrize("divergence", ["hutchinson_rademacher", "hutchinson_gaussian"])
def test_hutchinson_is_unbiased(divergence, sde_name):
  """64 copies of each of 4 points, each with its own probe: the mean of (Hutchinson - exact) is 0.

  A probe is drawn per example and held along the path, so each copy is one unbiased draw; the pooled
  mean over the 4 x 64 copies is compared with its standard error (from the per-point variances).
  """
  sde = SDES[sde_name]
  x, exact, _ = exact_divergence_run(sde_name)
  n_points, copies = 4, 64
  x_rep = jnp.repeat(x[:n_points], copies, axis=0)
  logp, _, _ = jax.jit(lambda key, x: likelihood.log_likelihood(
      key, sde, MIXTURE.score_fn(sde), x, divergence=divergence,
      prior_logp_fn=lambda z: exact_log_prob(sde, z, sde.T)))(jax.random.PRNGKey(1), x_rep)
  diff = np.asarray(logp, np.float64).reshape(n_points, copies) - exact[:n_points, None]
  se = np.sqrt(np.sum(diff.var(axis=1, ddof=1) / copies)) / n_points
  assert np.all(diff.std(axis=1) > 0)  # the probes do differ between copies
  assert abs(diff.mean()) < 3 * se, (diff.mean(axis=1), se)


# ---- bits per dimension and dequantization ----------------------------------------------------------------

def test_bpd_offset():
  """8 bits for 8-bit data on [0, 1] (bins of width 1/256), 7 on [-1, 1] (width 2/256)."""
  assert likelihood.bpd_offset(0.0, 1.0) == 8.0
  assert likelihood.bpd_offset(-1.0, 1.0) == 7.0
  assert likelihood.bpd_offset(0.0, 1.0, n_bits=5) == 5.0


def test_bits_per_dim_is_negative_log2_density_per_dimension_plus_offset():
  sde = sde_lib.VPSDE()
  tau = 0.5

  def score_fn(x, t):  # exact score of N(0, tau^2 I) data
    a, s = jax.vmap(sde.marginal_one)(jnp.ones_like(t), t)
    return -x / jnp.reshape(a**2 * tau**2 + s**2, (-1, 1, 1, 1))

  x = likelihood.dequantize(jax.random.PRNGKey(2), jnp.arange(12).reshape(3, 2, 2, 1) * 20, centered=True)
  key = jax.random.PRNGKey(3)
  logp, _, _ = likelihood.log_likelihood(key, sde, score_fn, x)
  bpd, _, _ = likelihood.bits_per_dim(key, sde, score_fn, x, data_min=-1.0, data_max=1.0)
  D = 4
  np.testing.assert_allclose(bpd, -np.asarray(logp) / (D * math.log(2)) + 7.0, rtol=1e-6)
  # The density is that of N(0, v(eps) I): the prior is p_T up to a(1)^2 tau^2 ~ 1e-5, and a Rademacher probe
  # is exact for this isotropic linear drift (v^T J v = sum_i J_ii v_i^2 = tr J).
  a, s = sde.marginal_one(jnp.ones(()), jnp.float32(EPS))
  v = float(a**2 * tau**2 + s**2)
  exact = -0.5 * D * np.log(2 * np.pi * v) - np.sum(np.asarray(x, np.float64) ** 2, axis=(1, 2, 3)) / (2 * v)
  np.testing.assert_allclose(logp, exact, rtol=REL_TOL)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("n_bits", [8, 5])
def test_dequantize_lands_in_the_right_bin(centered, n_bits):
  levels = 2**n_bits
  n = 20_000
  x_int = jax.random.randint(jax.random.PRNGKey(4), (n,), 0, levels)
  x = likelihood.dequantize(jax.random.PRNGKey(5), x_int, n_bits=n_bits, centered=centered)
  x = np.asarray(x, np.float64)
  unit = (x + 1) / 2 if centered else x  # back to [0, 1)
  assert np.all(unit >= 0) and np.all(unit < 1)
  np.testing.assert_array_equal(np.floor(unit * levels), np.asarray(x_int))
  u = unit * levels - np.asarray(x_int)  # position inside the bin: U[0, 1)
  assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
  assert abs(u.var() - 1 / 12) < 4 * math.sqrt(1 / 180 / n)  # Var of (u - 1/2)^2 for U[0,1) is 1/180
  x_again = likelihood.dequantize(jax.random.PRNGKey(6), x_int, n_bits=n_bits, centered=centered)
  assert not np.allclose(x_again, x)  # a new key, new positions in the same bins


@pytest.mark.parametrize("centered", [False, True])
def test_dequantize_never_rounds_into_the_next_bin(centered):
  """In float32, ``x_int + u`` with ``u`` just below 1 rounds up to ``x_int + 1`` (from x_int >= 2: about
  5e-6 of the draws for x_int >= 128): millions of draws in bins 3 and 255 must all stay inside."""
  for k in (3, 255):
    x = np.asarray(likelihood.dequantize(jax.random.PRNGKey(k), jnp.full((2**21,), k), centered=centered))
    unit = (x.astype(np.float64) + 1) / 2 if centered else x.astype(np.float64)
    assert np.all(np.floor(unit * 256) == k) and np.all(x < 1.0), np.max(unit * 256 - k)
