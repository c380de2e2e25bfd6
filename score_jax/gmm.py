"""Gaussian mixtures with closed-form densities and scores at every time of a linear SDE.

Under any of the SDEs in :mod:`score_jax.sde_lib` the perturbation kernel is ``N(a(t) x, s(t)^2 I)``, so a
mixture ``sum_k w_k N(mu_k, C_k)`` stays a mixture: ``p_t = sum_k w_k N(a mu_k, a^2 C_k + s^2 I)``. Its
log-density and score are exact at every ``t``, which makes these mixtures oracles for samplers, losses and
likelihoods. The 2-D default of the launcher is :func:`default_mixture`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sde_lib

Array = jax.Array

__all__ = ["GaussianMixture", "default_mixture"]


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """``sum_k weights[k] N(means[k], covs[k])`` in ``D`` dimensions.

  Attributes:
    weights: ``[K]``, positive, summing to 1.
    means: ``[K, D]``.
    covs: ``[K, D, D]``, symmetric positive definite.
  """

  weights: np.ndarray
  means: np.ndarray
  covs: np.ndarray

  def __post_init__(self):
    w, m, c = (np.asarray(a, np.float64) for a in (self.weights, self.means, self.covs))
    shapes_ok = w.ndim == 1 and m.ndim == 2 and m.shape[0] == w.shape[0] and c.shape == (w.shape[0],) + 2 * m.shape[1:]
    if not shapes_ok:
      raise ValueError(f"expected weights [K], means [K, D], covs [K, D, D]; got {w.shape}, {m.shape}, {c.shape}.")
    if np.any(w <= 0) or abs(w.sum() - 1) > 1e-6:
      raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}.")
    if np.any(np.linalg.eigvalsh(c) <= 0):
      raise ValueError("every covariance must be symmetric positive definite.")
    for name, value in (("weights", w), ("means", m), ("covs", c)):
      object.__setattr__(self, name, value)
    eigvals, eigvecs = np.linalg.eigh(c)  # C_k = U_k diag(lam_k) U_k^T
    object.__setattr__(self, "_eigvals", eigvals)
    object.__setattr__(self, "_eigvecs", eigvecs)

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @property
  def n_components(self) -> int:
    return self.weights.shape[0]

  def sample(self, key: Array, n: int, *, return_labels: bool = False):
    """``n`` samples ``[n, D]`` (float32) and, optionally, their component labels ``[n]``."""
    key_k, key_z = jax.random.split(key)
    labels = jax.random.choice(key_k, self.n_components, (n,), p=jnp.asarray(self.weights, jnp.float32))
    chol = jnp.asarray(np.linalg.cholesky(self.covs), jnp.float32)
    z = jax.random.normal(key_z, (n, self.dim))
    x = jnp.asarray(self.means, jnp.float32)[labels] + jnp.einsum("nij,nj->ni", chol[labels], z)
    return (x, labels) if return_labels else x

  def component(self, k: int) -> "GaussianMixture":
    """Component ``k`` alone, as a one-component mixture (the class-conditional density of label ``k``)."""
    if not 0 <= k < self.n_components:
      raise ValueError(f"component index must be in [0, {self.n_components}), got {k!r}.")
    return GaussianMixture(np.ones(1), self.means[k:k + 1], self.covs[k:k + 1])

  def condition(self, known, y) -> "GaussianMixture":
    """The exact conditional mixture of the other coordinates given ``x[known] = y``.

    Each component is conditioned as a Gaussian (``mu_u + C_uk C_kk^-1 (y - mu_k)``, ``C_uu - C_uk C_kk^-1
    C_ku``) and reweighted by its density of ``y``: ``w_k N(y; mu_k, C_kk) / sum_j (...)``.

    Args:
      known: indices of the observed coordinates (at least one, not all).
      y: their values ``[len(known)]``.
    """
    known = np.asarray(known, int).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    unknown = np.setdiff1d(np.arange(self.dim), known)
    if len(known) == 0 or len(unknown) == 0 or len(set(known.tolist())) != len(known) or known.min() < 0 \
        or known.max() >= self.dim:
      raise ValueError(f"known must be distinct coordinates in [0, {self.dim}), neither none nor all; got "
                       f"{known.tolist()}.")
    if y.shape != known.shape:
      raise ValueError(f"y must have one value per known coordinate ({len(known)}), got shape {y.shape}.")
    c_kk = self.covs[:, known][:, :, known]  # [K, k, k]
    c_uk = self.covs[:, unknown][:, :, known]  # [K, u, k]
    c_uu = self.covs[:, unknown][:, :, unknown]
    gain = np.einsum("nuk,nkj->nuj", c_uk, np.linalg.inv(c_kk))  # C_uk C_kk^-1
    diff = y[None] - self.means[:, known]  # [K, k]
    means = self.means[:, unknown] + np.einsum("nuk,nk->nu", gain, diff)
    covs = c_uu - np.einsum("nuk,nvk->nuv", gain, c_uk)
    maha = np.einsum("nk,nkj,nj->n", diff, np.linalg.inv(c_kk), diff)
    log_w = np.log(self.weights) - 0.5 * (maha + np.linalg.slogdet(c_kk)[1])
    weights = np.exp(log_w - log_w.max())
    return GaussianMixture(weights / weights.sum(), means, 0.5 * (covs + np.swapaxes(covs, 1, 2)))

  def at_time(self, sde: sde_lib.SDE, t) -> "GaussianMixture":
    """The marginal ``p_t`` of this mixture under ``sde`` at a concrete scalar time ``t``."""
    a, s = sde.marginal_one(jnp.ones(()), jnp.asarray(t, jnp.float32))
    a, s = float(a), float(s)
    return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * np.eye(self.dim))

  def _log_prob_one(self, x: Array, a: Array, s: Array) -> Array:
    """log p_t(x) of one example ``x [D]`` given the kernel's mean factor ``a`` and std ``s``.

    With ``C_k = U_k diag(lam_k) U_k^T`` (eigendecomposed once), the marginal covariance
    ``a^2 C_k + s^2 I = U_k diag(a^2 lam_k + s^2) U_k^T``: no factorisation per example or per time.
    """
    eigvals = jnp.asarray(self._eigvals, x.dtype)  # [K, D]
    eigvecs = jnp.asarray(self._eigvecs, x.dtype)  # [K, D, D], columns are eigenvectors
    var = a**2 * eigvals + s**2  # [K, D]
    y = jnp.einsum("kdj,kd->kj", eigvecs, x[None] - a * jnp.asarray(self.means, x.dtype))  # U_k^T (x - a mu_k)
    log_comp = -0.5 * (jnp.sum(y**2 / var + jnp.log(var), axis=1) + self.dim * jnp.log(2 * jnp.pi))
    return jax.scipy.special.logsumexp(log_comp + jnp.log(jnp.asarray(self.weights, x.dtype)))

  def log_prob(self, x: Array) -> Array:
    """Exact log-density ``[B]`` of the data distribution at ``x [B, D]``."""
    one = jnp.ones((), jnp.asarray(x).dtype)
    return jax.vmap(lambda xi: self._log_prob_one(xi, one, 0.0 * one))(jnp.asarray(x))

  def score(self, x: Array) -> Array:
    """Exact score ``[B, D]`` of the data distribution."""
    one = jnp.ones((), jnp.asarray(x).dtype)
    return jax.vmap(jax.grad(lambda xi: self._log_prob_one(xi, one, 0.0 * one)))(jnp.asarray(x))

  def marginal_log_prob(self, sde: sde_lib.SDE, x: Array, t: Array) -> Array:
    """Exact ``log p_t(x)`` ``[B]`` under ``sde`` for ``x [B, D]`` and ``t [B]``."""
    def one(x, t):
      a, s = sde.marginal_one(jnp.ones((), x.dtype), t)
      return self._log_prob_one(x, a, s)
    return jax.vmap(one)(x, t)

  def score_fn(self, sde: sde_lib.SDE):
    """The exact batched ``score_fn(x [B, D], t [B])`` of the marginals ``p_t`` under ``sde``."""
    def one(x, t):
      a, s = sde.marginal_one(jnp.ones((), x.dtype), t)
      return jax.grad(self._log_prob_one)(x, a, s)
    return lambda x, t: jax.vmap(one)(x, t)


def default_mixture() -> GaussianMixture:
  """The 2-D default: six anisotropic components of unequal weight on a ring of radius 3, plus one at 0."""
  K = 6
  angles = 2 * np.pi * np.arange(K) / K
  ring = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  means = np.concatenate([ring, np.zeros((1, 2))])
  covs = []
  for angle in angles:  # elongated along the ring's tangent
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    covs.append(rot @ np.diag([0.05, 0.25]) @ rot.T)
  covs.append(np.diag([0.3, 0.3]))
  weights = np.array([2, 1, 2, 1, 2, 1, 3], np.float64)
  return GaussianMixture(weights / weights.sum(), means, np.stack(covs))
