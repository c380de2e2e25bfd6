"""Exact log-likelihoods through the probability-flow ODE (Score-SDE eq. 39, App. D.2).

With the probability-flow drift ``f~(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t)``, the instantaneous change of
variables gives

    log p_0(x(0)) = log p_T(x(T)) + int_0^T div f~(x(t), t) dt,

solved forward from ``eps`` to ``T`` together with ``x(t)``. The divergence is exact (``D`` Jacobian-vector
products, for small dimensions) or the Hutchinson estimate ``E_v[v^T (d f~/dx) v]`` with one Rademacher
or Gaussian probe ``v`` per example held fixed along the path, which keeps the estimate unbiased.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sampling, sde_lib

Array = jax.Array

__all__ = ["DIVERGENCES", "log_likelihood", "bits_per_dim", "bpd_offset", "dequantize", "dequantize_uniform"]

DIVERGENCES = ("hutchinson_rademacher", "hutchinson_gaussian", "exact")


def _probe(key: Array, divergence: str, shape) -> Array:
  if divergence == "hutchinson_gaussian":
    return jax.random.normal(key, shape)
  return jax.random.rademacher(key, shape, jnp.float32)


def _divergence_fn(drift_fn, divergence: str):
  """``div(t, x, v) -> [B]``: the divergence of ``drift_fn(t, .)`` at a batch ``x``, per example.

  The drift is batched but acts on each example separately, so the Jacobian of the batch map is block
  diagonal and one batched JVP gives every example's ``(d f / dx) v`` at once.
  """
  def jvp(t, x, v):
    return jax.jvp(lambda y: drift_fn(t, y), (x,), (v,))[1]

  if divergence == "exact":
    def exact(t, x, _):
      B, D = x.shape[0], math.prod(x.shape[1:])
      basis = jnp.eye(D, dtype=x.dtype).reshape((D,) + x.shape[1:])  # [D, ...]

      def column(e):  # e: one basis direction, the same for every example
        e = jnp.broadcast_to(e, x.shape)  # [B, ...]
        jv = jvp(t, x, e)
        return jnp.sum(jnp.reshape(jv * e, (B, -1)), axis=1)

      return jnp.sum(jax.lax.map(column, basis), axis=0)

    return exact

  def hutchinson(t, x, v):
    return jnp.sum(jnp.reshape(jvp(t, x, v) * v, (x.shape[0], -1)), axis=1)

  return hutchinson


def log_likelihood(key: Array, sde: sde_lib.SDE, score_fn, x: Array, *, divergence: str = "hutchinson_rademacher",
                   rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5, solver: str = "tsit5",
                   max_steps: int = 100_000, prior_logp_fn=None):
  """Log-density of ``x`` under the model's probability-flow ODE.

  Args:
    key: PRNG key for the Hutchinson probes (unused for ``divergence='exact'``).
    sde: forward SDE; score_fn: batched ``score_fn(x, t)``.
    x: data ``[B, ...]`` (already scaled as the model sees it, dequantized if discrete).
    divergence: ``'hutchinson_rademacher'``, ``'hutchinson_gaussian'`` or ``'exact'``.
    rtol, atol: ODE tolerances; eps: the start time (the ODE runs from ``eps`` to ``T``).
    solver: an adaptive solver of :data:`score_jax.sampling.ODE_SOLVERS` (not ``'euler'``).
    prior_logp_fn: ``z [B, ...] -> [B]`` used at ``T`` instead of ``sde.prior_logp`` (e.g. the exact
      ``log p_T`` in tests; the model itself always uses the prior).

  Returns:
    ``(logp [B] in nats, z [B, ...] the latent at T, nfe)``; ``nfe`` counts evaluations of the augmented
    vector field (each is one score evaluation plus its JVPs).
  """
  if divergence not in DIVERGENCES:
    raise ValueError(f"Unknown divergence {divergence!r}; expected one of {DIVERGENCES}.")
  if jnp.ndim(x) < 2:
    raise ValueError(f"x must be a batch [B, ...] with at least one data dimension, got shape {jnp.shape(x)}.")
  if not 0 <= eps < sde.T:
    raise ValueError(f"eps must lie in [0, T) = [0, {sde.T}), got {eps!r}.")
  x = jnp.asarray(x, jnp.float32)
  drift_fn = sampling.probability_flow_drift_fn(sde, score_fn)
  div_fn = _divergence_fn(drift_fn, divergence)
  v = _probe(key, divergence, x.shape) if divergence != "exact" else None

  def augmented(t, state):
    y, _ = state
    return drift_fn(t, y), div_fn(t, y, v)

  state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
  (z, delta_logp), nfe = sampling.solve_ode(augmented, state0, eps, sde.T, rtol=rtol, atol=atol, solver=solver,
                                            max_steps=max_steps)
  prior_logp = sde.prior_logp(z) if prior_logp_fn is None else prior_logp_fn(z)
  return prior_logp + delta_logp, z, nfe


def bpd_offset(data_min: float = 0.0, data_max: float = 1.0, n_bits: int = 8) -> float:
  """Bits/dim to add to ``-log2 p(x) / D`` for data of ``2^n_bits`` levels mapped onto ``[data_min, data_max]``.

  A density on a box of width ``w`` per dimension turns into a probability mass per bin of width
  ``w / 2^n_bits``, so ``-log2 P = -log2 p + n_bits - log2 w``: 8 bits for ``[0, 1]`` data and 7 for
  centered ``[-1, 1]`` data. This is the original's ``7 - inverse_scaler(-1)`` for 8-bit images.
  """
  width = data_max - data_min
  if width <= 0:
    raise ValueError(f"data_max must exceed data_min, got [{data_min}, {data_max}].")
  return n_bits - math.log2(width)


def bits_per_dim(key: Array, sde: sde_lib.SDE, score_fn, x: Array, *, data_min: float = 0.0, data_max: float = 1.0,
                 n_bits: int = 8, **kwargs):
  """Bits per dimension of ``x`` (dequantized, scaled to ``[data_min, data_max]``) via :func:`log_likelihood`.

  Returns:
    ``(bpd [B], z, nfe)``.
  """
  logp, z, nfe = log_likelihood(key, sde, score_fn, x, **kwargs)
  D = math.prod(jnp.shape(x)[1:])
  bpd = -logp / (D * math.log(2.0)) + bpd_offset(data_min, data_max, n_bits)
  return bpd, z, nfe


def dequantize_uniform(x_int, u, *, n_bits: int = 8, centered: bool = False):
  """Uniform dequantization with explicit noise: ``(x + u) / 2^n_bits`` for integer data ``x_int`` in
  ``[0, 2^n_bits)`` and ``u`` in ``[0, 1)`` of its shape, kept inside the bin of ``x_int``.

  Works on NumPy arrays (the data loader, :mod:`score_jax.datasets`) and JAX arrays alike; float32 results in
  ``[0, 1)``, or ``[-1, 1)`` if ``centered`` (then use ``data_min=-1`` in :func:`bits_per_dim`). Rounding of
  ``x + u`` (or of ``2 x - 1``) in float32 can land on the bin's upper edge, i.e. in the next bin or at 1; the
  result is clipped to the bin, so the discrete value it dequantizes is always recovered.
  """
  xp = jnp if isinstance(x_int, jax.Array) or isinstance(u, jax.Array) else np
  levels = 2**n_bits
  x_int = xp.asarray(x_int).astype(xp.float32)
  x = (x_int + xp.asarray(u, xp.float32)) / levels
  low, high = x_int / levels, (x_int + 1) / levels  # the bin's edges, exact (levels is a power of two)
  if centered:
    x, low, high = 2 * x - 1, 2 * low - 1, 2 * high - 1
  return xp.clip(x, low, xp.nextafter(high, low)).astype(xp.float32)


def dequantize(key: Array, x_int: Array, *, n_bits: int = 8, centered: bool = False) -> Array:
  """:func:`dequantize_uniform` with ``u ~ U[0, 1)`` drawn from ``key``."""
  return dequantize_uniform(x_int, jax.random.uniform(key, jnp.shape(x_int)), n_bits=n_bits, centered=centered)
