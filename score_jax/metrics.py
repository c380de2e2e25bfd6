"""Sample-quality distances for low-dimensional data: sliced Wasserstein and MMD."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["sliced_wasserstein", "mmd_rbf"]


def sliced_wasserstein(key: Array, x: Array, y: Array, n_projections: int = 256) -> Array:
  """Sliced 2-Wasserstein distance between equal-size samples ``x, y [n, D]``.

  ``sqrt(E_u W_2^2(u^T x, u^T y))`` over random unit directions ``u``; each 1-D ``W_2`` is exact (sorted
  samples).
  """
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}.")
  u = jax.random.normal(key, (n_projections, x.shape[1]))
  u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
  px, py = jnp.sort(x @ u.T, axis=0), jnp.sort(y @ u.T, axis=0)
  return jnp.sqrt(jnp.mean((px - py) ** 2))


def mmd_rbf(x: Array, y: Array, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> Array:
  """Unbiased squared MMD with a sum of RBF kernels ``exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths``."""
  def kernel(a, b):
    d2 = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return sum(jnp.exp(-d2 / (2 * h**2)) for h in bandwidths)

  n, m = x.shape[0], y.shape[0]
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  sum_xx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
  sum_yy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
  return sum_xx + sum_yy - 2 * jnp.mean(kxy)
