"""Oracle tests of the score-matching objectives against closed forms for Gaussian scores.

* A linear score ``s(x) = -A (x - b)`` has Jacobian ``-A`` everywhere, so implicit score matching (ISM) and
  sliced score matching (SSM) reduce to traces and quadratic forms that are computed here by hand, in float64,
  on the very same draws.
* For Gaussian data the population objectives are closed forms too, and a score family
  ``theta * exact_score`` has ``d loss / d theta = 0`` exactly at ``theta = 1`` (the exact score minimises
  every one of these objectives) with a known non-zero slope elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import gmm, losses, sde_lib

SDES = {
    "vesde": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vpsde": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvpsde": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0),
}
D = 3
RNG = np.random.default_rng(0)
MU = RNG.normal(size=D)
_L = RNG.normal(size=(D, D))
SIGMA = _L @ _L.T + 0.5 * np.eye(D)  # data covariance
A = RNG.normal(size=(D, D)) + 2 * np.eye(D)  # deliberately not symmetric: tr and quadratic forms still apply
B_SHIFT = RNG.normal(size=D)


def linear_score(x):
  """``s(x) = -A (x - b)`` on a batch ``[n, D]``."""
  return -(x - jnp.asarray(B_SHIFT, jnp.float32)[None]) @ jnp.asarray(A.T, jnp.float32)


def data(n, seed=1):
  return np.random.default_rng(seed).multivariate_normal(MU, SIGMA, size=n).astype(np.float32)


def ism_by_hand(x):
  """Per example ``tr(ds/dx) + 1/2 |s|^2 = -tr A + 1/2 |A (x - b)|^2``, float64."""
  r = (np.asarray(x, np.float64) - B_SHIFT) @ A.T
  return -np.trace(A) + 0.5 * np.sum(r**2, axis=1)


def ssm_by_hand(x, v, variance_reduction):
  """Per draw ``v^T (ds/dx) v + 1/2 (v^T s)^2`` (or ``+ 1/2 |s|^2``) = ``-v^T A v + ...``, ``[M, n]``."""
  x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
  s = -(x - B_SHIFT) @ A.T  # [n, D]
  quad = -np.einsum("mnd,de,mne->mn", v, A, v)
  if variance_reduction:
    second = 0.5 * np.sum(s**2, axis=1)[None]
  else:
    second = 0.5 * np.einsum("mnd,nd->mn", v, s) ** 2
  return quad + second


def test_ism_equals_its_closed_form_on_the_sample():
  x = data(64)
  np.testing.assert_allclose(float(losses.ism_loss(linear_score, x)), ism_by_hand(x).mean(), rtol=1e-5)


@pytest.mark.parametrize("variance_reduction", [False, True])
def test_ssm_equals_its_closed_form_on_the_draws(variance_reduction):
  x = data(64)
  v = jax.random.normal(jax.random.PRNGKey(0), (5, 64, D))
  loss = losses.ssm_loss(linear_score, x, v, variance_reduction=variance_reduction)
  np.testing.assert_allclose(float(loss), ssm_by_hand(x, v, variance_reduction).mean(), rtol=1e-5)
  one = losses.ssm_loss(linear_score, x, v[0], variance_reduction=variance_reduction)  # v of shape [B, D]
  np.testing.assert_allclose(float(one), ssm_by_hand(x, v[:1], variance_reduction).mean(), rtol=1e-5)


def test_population_ism_is_the_fisher_divergence_up_to_a_constant():
  """Hyvarinen's identity: ``ISM = 1/2 E|s - grad log p|^2 - 1/2 E|grad log p|^2``, both in closed form.

  For ``p = N(mu, Sigma)``: ``s - grad log p = (Sigma^-1 - A)(x - mu) + A (b - mu)`` and
  ``E|grad log p|^2 = tr Sigma^-1``. The sample average is within 4 standard errors of it.
  """
  n = 100_000
  x = data(n, seed=2)
  prec = np.linalg.inv(SIGMA)
  M = prec - A
  fisher = np.trace(M @ SIGMA @ M.T) + np.sum((A @ (B_SHIFT - MU)) ** 2)
  expected = 0.5 * fisher - 0.5 * np.trace(prec)
  per_example = ism_by_hand(x)
  se = per_example.std() / np.sqrt(n)
  assert abs(float(losses.ism_loss(linear_score, x)) - expected) < 4 * se, (expected, se)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_ssm_is_unbiased_for_ism(variance_reduction, probe):
  """``E_v[v^T J v] = tr J`` and ``E_v[(v^T s)^2] = |s|^2`` when ``E[v v^T] = I``: averaged over many
  projections, sliced SM (with or without variance reduction) is ISM on the same points."""
  x = data(16)
  M = 4000
  key = jax.random.PRNGKey(3)
  v = jax.random.normal(key, (M, 16, D)) if probe == "gaussian" else jax.random.rademacher(key, (M, 16, D),
                                                                                            jnp.float32)
  per_draw = jax.vmap(lambda v: losses.ssm_loss(linear_score, x, v, variance_reduction=variance_reduction))(v)
  per_draw = np.asarray(per_draw, np.float64)  # [M]: independent draws of the projections
  ism = float(losses.ism_loss(linear_score, x))
  se = per_draw.std() / np.sqrt(M)
  assert abs(per_draw.mean() - ism) < 4 * se, (per_draw.mean(), ism, se)
  assert per_draw.std() > 1e-3 * abs(ism)  # the projections really are random


# ---- the exact score minimises DSM ------------------------------------------------------------------------

TAU = 0.7  # data N(0, TAU^2 I)
N_DSM = 20_000
DSM_EPS = 1e-5


def _a_s(sde, t):
  return jax.vmap(sde.marginal_one)(jnp.ones_like(t), t)


def scaled_exact_score(sde, theta):
  """``theta`` times the exact score ``-x / (a^2 tau^2 + s^2)`` of ``p_t`` for ``N(0, tau^2 I)`` data."""
  def score_fn(x, t):
    a, s = _a_s(sde, t)
    return -theta * x / (a**2 * TAU**2 + s**2)[:, None]
  return score_fn


def expected_dsm_slope(sde, t, theta, likelihood_weighting):
  """``E[d loss / d theta | t]`` per example (reduce_mean=True, D-independent).

  With ``x_t = a x + s z`` and ``s* = -x_t / v``, ``v = a^2 tau^2 + s^2``: ``E[s^2 s*_d^2] = s^2 / v`` and
  ``E[s z_d s*_d] = -s^2 / v``, so the slope of ``mean_d (theta s s*_d + z_d)^2`` is
  ``2 (theta - 1) s^2 / v``; with likelihood weighting, ``g^2 mean_d (theta s*_d + z_d / s)^2``, it is
  ``2 (theta - 1) g^2 / v``.
  """
  a, s = _a_s(sde, t)
  v = a**2 * TAU**2 + s**2
  g2 = jax.vmap(lambda t: sde.sde_one(jnp.zeros(()), t)[1] ** 2)(t)
  weight = g2 if likelihood_weighting else s**2
  return np.asarray(2 * (theta - 1) * weight / v, np.float64)


@pytest.mark.parametrize("likelihood_weighting", [False, True])
@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_dsm_gradient_vanishes_at_the_exact_score(sde_name, likelihood_weighting):
  sde = SDES[sde_name]
  key_x, key_t, key_z = jax.random.split(jax.random.PRNGKey(4), 3)
  x = TAU * jax.random.normal(key_x, (N_DSM, 2))
  t = jax.random.uniform(key_t, (N_DSM,), minval=DSM_EPS, maxval=sde.T)
  z = jax.random.normal(key_z, (N_DSM, 2))

  def loss(theta, x, t, z):
    return losses.sde_loss(sde, scaled_exact_score(sde, theta), x, t, z,
                           likelihood_weighting=likelihood_weighting)

  per_example_slope = jax.jit(jax.vmap(jax.grad(lambda th, x, t, z: loss(th, x[None], t[None], z[None])),
                                       in_axes=(None, 0, 0, 0)))
  batch_slope = jax.jit(jax.grad(loss))
  for theta in (1.0, 0.5):
    slope = float(batch_slope(theta, x, t, z))
    per_example = np.asarray(per_example_slope(theta, x, t, z), np.float64)
    np.testing.assert_allclose(slope, per_example.mean(), rtol=1e-4, atol=1e-6 * np.abs(per_example).mean())
    # Conditionally on the drawn t the mean slope is known; the residuals give its standard error.
    expected = expected_dsm_slope(sde, t, theta, likelihood_weighting)
    se = (per_example - expected).std() / np.sqrt(N_DSM)
    assert abs(slope - expected.mean()) < 4 * se, (theta, slope, expected.mean(), se)
    if theta == 1.0:
      assert abs(slope) < 4 * se, (slope, se)  # the minimum
    else:
      assert slope < -10 * se, (slope, se)  # clearly not the minimum: the loss decreases towards theta = 1


# ---- the exact score minimises the noise-conditional ISM / SSM losses -------------------------------------

MIXTURE = gmm.default_mixture()
N_NC = 2000


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("kind", ["ism", "ssm", "ssm_vr"])
def test_noise_conditional_gradient_vanishes_at_the_exact_score(kind, sde_name):
  """For any ``p_t``, ``E[tr grad s* + theta |s*|^2] = (theta - 1) E|s*|^2`` (integration by parts), so the
  ``s(t)^2``-weighted ISM / SSM losses of ``theta s*`` have zero slope at ``theta = 1`` and a negative one
  at ``theta = 1/2``. Data: the 2-D mixture, with its exact ``mixture.score_fn``."""
  sde = SDES[sde_name]
  loss_fn = losses.make_loss_fn(kind, sde, n_projections=2)
  exact = MIXTURE.score_fn(sde)
  x = MIXTURE.sample(jax.random.PRNGKey(5), N_NC)
  keys = jax.random.split(jax.random.PRNGKey(6), N_NC)

  def per_example_loss(theta, key, x):  # independent t, x_t and projections per example
    return loss_fn(key, lambda y, t: theta * exact(y, t), x[None])

  slopes = jax.jit(jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0, 0)))
  at_one = np.asarray(slopes(1.0, keys, x), np.float64)
  at_half = np.asarray(slopes(0.5, keys, x), np.float64)
  se_one, se_half = at_one.std() / np.sqrt(N_NC), at_half.std() / np.sqrt(N_NC)
  assert abs(at_one.mean()) < 4 * se_one, (at_one.mean(), se_one)
  assert at_half.mean() < -10 * se_half, (at_half.mean(), se_half)
