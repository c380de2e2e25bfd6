"""The SMLD noise levels that the discrete-label networks (NCSN, NCSNv2, DDPM with ``scale_by_sigma``) index."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import validation

Array = jax.Array

__all__ = ["get_sigmas", "check_sigmas", "check_integer_labels", "divide_by_sigma"]


def check_sigmas(sigma_min: float, sigma_max: float, num_scales: int, where: str) -> None:
  """Raise unless ``0 < sigma_min < sigma_max`` and ``num_scales`` is a positive integer."""
  if not validation.is_int(num_scales, 1):
    raise ValueError(f"{where}: num_scales must be a positive integer, got {num_scales!r}.")
  if not (np.isfinite(sigma_min) and np.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
    raise ValueError(f"{where}: expected 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, "
                     f"sigma_max={sigma_max!r}.")


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> Array:
  """Geometric noise levels ``[num_scales]`` from ``sigma_max`` (index 0) down to ``sigma_min`` (float32).

  ``sigma_i = exp(linspace(log sigma_max, log sigma_min, N)_i)`` (NCSN, section 4.2).
  """
  return jnp.exp(jnp.linspace(jnp.log(sigma_max), jnp.log(sigma_min), num_scales))


def check_integer_labels(labels: Array, where: str) -> None:
  """Raise unless ``labels`` is a ``[B]`` array of integer noise-level indices."""
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{where}: expected labels of shape [B] with integer noise-level indices into sigmas, "
                     f"got shape {labels.shape} and dtype {labels.dtype}.")


def divide_by_sigma(h: Array, sigmas: Array, labels: Array) -> Array:
  """``h[b] / sigmas[labels[b]]`` for ``h`` ``[B, ...]`` and int ``labels`` ``[B]``."""
  return jax.vmap(jnp.divide)(h, sigmas[labels])
