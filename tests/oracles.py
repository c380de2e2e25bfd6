"""Oracles shared by the sampler tests: the 4-D product target ``N(0, TAU^2 I_2) x gmm.default_mixture()`` with
its exact scores under each SDE, exact samples at any time, per-sample statistics and the check of a sample set
against them, and a host-side counter of score evaluations."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from score_jax import gmm, sde_lib

TAU = 0.5  # std of the Gaussian block
MIXTURE = gmm.default_mixture()
BATCH = 4000  # samples per sampler run (corrector-only runs, a coarse check, use BATCH // 2)
N_REF = 200_000  # exact samples for the reference statistics
Z_MAX = 4.5  # ~18 statistics x ~40 runs: P(|z| > 4.5) = 7e-6 each, < 1% for the whole file under H0
SNR = 0.16  # the PC sampler's default

SDE_NAMES = ("vesde", "vpsde", "subvpsde")
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
CORRECTORS = ("langevin", "ald", "none")


def make_sde(name: str, N: int) -> sde_lib.SDE:
  """The three SDEs; VE with sigma_max = 10 (>> the mixture's radius 3, so p_T is close to the prior)."""
  return {
      "vesde": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=N),
      "vpsde": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=N),
      "subvpsde": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=N),
  }[name]()


def _kernel(sde, t):
  """``(a(t), s(t))``, each ``[B]``: the kernel ``p_0t(x_t | x_0) = N(a x_0, s^2 I)``."""
  return jax.vmap(sde.marginal_one)(jnp.ones_like(t), t)


def gaussian_score_fn(sde, tau=TAU):
  """Exact score ``-x / (a^2 tau^2 + s^2)`` of ``p_t`` for ``N(0, tau^2 I)`` data."""
  def score_fn(x, t):
    a, s = _kernel(sde, t)
    return -x / (a**2 * tau**2 + s**2)[:, None]
  return score_fn


_EIGVALS, _EIGVECS = np.linalg.eigh(MIXTURE.covs)  # [K, D], [K, D, D]: C_k = U_k diag(lam_k) U_k^T


def mixture_score_fn(sde):
  """Exact score of ``p_t`` for the mixture, vectorised over the batch (``test_mixture_score_is_gmm_score``).

  ``gmm.GaussianMixture.score_fn`` factorises the K covariances ``a^2 C_k + s^2 I`` for every example;
  here they are diagonal in each component's fixed eigenbasis, ``U_k diag(a^2 lam_k + s^2) U_k^T``,
  which is ~10x faster on CPU and keeps the full sampler grid inside the time budget.
  """
  U = jnp.asarray(_EIGVECS, jnp.float32)
  lam0 = jnp.asarray(_EIGVALS, jnp.float32)
  means = jnp.asarray(MIXTURE.means, jnp.float32)
  log_w = jnp.log(jnp.asarray(MIXTURE.weights, jnp.float32))

  def score_fn(x, t):
    a, s = _kernel(sde, t)
    lam = a[:, None, None] ** 2 * lam0[None] + s[:, None, None] ** 2  # [B, K, D]
    diff = x[:, None, :] - a[:, None, None] * means[None]  # [B, K, D]
    proj = jnp.einsum("kde,bkd->bke", U, diff)  # coordinates in each component's eigenbasis
    log_comp = log_w[None] - 0.5 * jnp.sum(proj**2 / lam + jnp.log(2 * jnp.pi * lam), axis=-1)  # [B, K]
    resp = jax.nn.softmax(log_comp, axis=1)
    comp_scores = -jnp.einsum("kde,bke->bkd", U, proj / lam)  # [B, K, D]
    return jnp.einsum("bk,bkd->bd", resp, comp_scores)

  return score_fn


def product_score_fn(sde):
  """Exact score of ``p_t`` for the 4-D product target: Gaussian block (dims 0-1), mixture (dims 2-3)."""
  gauss, mix = gaussian_score_fn(sde), mixture_score_fn(sde)
  return lambda x, t: jnp.concatenate([gauss(x[:, :2], t), mix(x[:, 2:], t)], axis=1)


def sample_product(key, n, sde=None):
  """Exact samples ``[n, 4]`` of the product target at t = 0, or of its ``p_T`` under ``sde``."""
  key_g, key_m = jax.random.split(key)
  if sde is None:
    std, mixture = TAU, MIXTURE
  else:
    a, s = sde.marginal_one(jnp.ones(()), jnp.asarray(sde.T, jnp.float32))
    std, mixture = float(jnp.sqrt(a**2 * TAU**2 + s**2)), MIXTURE.at_time(sde, sde.T)
  return jnp.concatenate([std * jax.random.normal(key_g, (n, 2)), mixture.sample(key_m, n)], axis=1)


# ---- statistics -------------------------------------------------------------------------------------------

_COV_INV = np.linalg.inv(MIXTURE.covs)
_LOG_NORM = np.log(MIXTURE.weights) - 0.5 * np.log(np.linalg.det(MIXTURE.covs))
STAT_NAMES = (["gauss mean 0", "gauss mean 1", "gauss x0^2", "gauss x1^2", "gauss x0 x1",
               "mix mean 0", "mix mean 1", "mix x0^2", "mix x1^2", "mix x0 x1"]
              + [f"mix occupancy {k}" for k in range(MIXTURE.n_components)] + ["mix Mahalanobis^2"])


def statistics(x) -> np.ndarray:
  """Per-sample features ``[n, 18]`` whose means the tests compare with the exact distribution's.

  First and second moments of both blocks; for the mixture also the one-hot of the most probable
  component (occupancy: the mode weights) and the squared Mahalanobis distance to it (the spread inside
  the modes, which the mixture's second moments, dominated by the radius-3 ring, barely see).
  """
  x = np.asarray(x, np.float64)
  g, m = x[:, :2], x[:, 2:]
  diff = m[:, None, :] - MIXTURE.means[None]  # [n, K, 2]
  maha = np.einsum("nkd,kde,nke->nk", diff, _COV_INV, diff)
  label = np.argmax(_LOG_NORM[None] - 0.5 * maha, axis=1)
  onehot = np.eye(MIXTURE.n_components)[label]
  return np.concatenate([g, g**2, g[:, :1] * g[:, 1:], m, m**2, m[:, :1] * m[:, 1:], onehot,
                         maha[np.arange(len(x)), label][:, None]], axis=1)


def reference_statistics(n: int = N_REF, seed: int = 12345):
  """Mean, squared standard error and RMS of every statistic under the exact target (t = 0)."""
  f = statistics(sample_product(jax.random.PRNGKey(seed), n))
  return f.mean(0), f.var(0) / n, np.sqrt(np.mean(f**2, axis=0))


def assert_matches_target(x, reference, delta, what=""):
  """Every statistic's mean within ``Z_MAX`` standard errors plus ``delta`` times its RMS of the truth.

  The standard error combines the sample's and the reference's; ``delta`` is the sampler's systematic
  error the caller allows for (finite N, Langevin bias), relative to the statistic's scale.
  """
  x = np.asarray(x)
  assert x.ndim == 2 and x.shape[1] == 4 and np.all(np.isfinite(x)), f"{what}: bad samples {x.shape}"
  ref_mean, ref_var, ref_rms = reference
  f = statistics(x)
  err = f.mean(0) - ref_mean
  se = np.sqrt(f.var(0) / len(f) + ref_var)
  tol = Z_MAX * se + delta * ref_rms
  bad = [f"{STAT_NAMES[j]}: {f.mean(0)[j]:.4f} vs {ref_mean[j]:.4f} (err {err[j]:+.4f}, "
         f"{err[j] / se[j]:+.1f} SE, tol {tol[j]:.4f})" for j in np.flatnonzero(np.abs(err) > tol)]
  assert not bad, f"{what}: samples do not match the target:\n  " + "\n  ".join(bad)


def evaluation_counter():
  """``(tick, counter)``: calling ``tick()`` inside jitted code adds one to ``counter[0]`` at run time."""
  counter = [0]

  def host_tick():
    counter[0] += 1
    return np.int32(0)

  def tick():
    io_callback(host_tick, jax.ShapeDtypeStruct((), jnp.int32), ordered=True)

  return tick, counter
