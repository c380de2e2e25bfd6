"""Normalisation layers of the NCSN family (NHWC), and the name -> layer lookup the networks use.

All statistics are per example and per channel over the spatial axes ``(H, W)``. The "++" variants
(NCSN, Song & Ermon 2019, appendix A) add back a normalised version of the per-channel means, so the
relative brightness of the channels is not lost by the instance normalisation.

Class names are part of the parameter paths (``InstanceNorm2dPlus_0/alpha``, ...) and match the original
JAX code, so checkpoints written by it load without renaming.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "InstanceNorm2d", "InstanceNorm2dPlus", "VarianceNorm2d", "ConditionalInstanceNorm2dPlus",
    "NORMALIZATIONS", "GROUP_NORM_GROUPS", "get_normalization", "check_group_norm_channels",
]

# Added to the variance before the square root in the instance normalisations (PyTorch's default).
NORM_EPS = 1e-5
# Standard deviation of the noise around 1 with which the NCSN scale parameters start.
SCALE_INIT_STD = 0.02
# GroupNorm as the original builds it: flax's default of 32 groups.
GROUP_NORM_GROUPS = 32

# model.normalization values understood by get_normalization.
NORMALIZATIONS = ("InstanceNorm", "InstanceNorm++", "VarianceNorm", "GroupNorm")


def _near_one_init(key: Array, shape, dtype=jnp.float32) -> Array:
  """``1 + N(0, SCALE_INIT_STD^2)``: scales that start close to the identity."""
  return 1.0 + SCALE_INIT_STD * jax.random.normal(key, shape, dtype)


def _spatial_moments(x: Array) -> tuple[Array, Array]:
  """Per-example, per-channel mean and (biased) variance over ``H, W``: ``[B, H, W, C] -> 2 x [B, 1, 1, C]``."""
  return jnp.mean(x, axis=(1, 2), keepdims=True), jnp.var(x, axis=(1, 2), keepdims=True)


def _normalised_channel_means(mu: Array) -> Array:
  """The "++" term: channel means standardised across channels, ``[B, 1, 1, C] -> [B, 1, 1, C]``.

  ``(mu_k - mean_k(mu)) / sqrt(var_k(mu) + eps)`` (NCSN, eq. 13 of appendix A).
  """
  m = jnp.mean(mu, axis=-1, keepdims=True)
  v = jnp.var(mu, axis=-1, keepdims=True)
  return (mu - m) / jnp.sqrt(v + NORM_EPS)


class VarianceNorm2d(nn.Module):
  """Divides by the per-channel spatial std without centring: ``x / sqrt(var + eps) * scale (+ bias)``.

  ``x``: ``[B, H, W, C]`` -> ``[B, H, W, C]``; params ``scale`` (and ``bias``) of shape ``[1, 1, 1, C]``.
  """

  bias: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _, var = _spatial_moments(x)
    h = x / jnp.sqrt(var + NORM_EPS)
    h = h * self.param("scale", _near_one_init, (1, 1, 1, x.shape[-1]))
    if self.bias:
      h = h + self.param("bias", nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
    return h


class InstanceNorm2d(nn.Module):
  """Instance normalisation ``(x - mu) / sqrt(var + eps) * scale (+ bias)`` with ``[1, 1, 1, C]`` params.

  ``x``: ``[B, H, W, C]`` -> ``[B, H, W, C]``.
  """

  bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    mu, var = _spatial_moments(x)
    h = (x - mu) / jnp.sqrt(var + NORM_EPS)
    h = h * self.param("scale", nn.initializers.ones, (1, 1, 1, x.shape[-1]))
    if self.bias:
      h = h + self.param("bias", nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
    return h


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ (NCSN appendix A): ``gamma * (x_hat + alpha * mu_hat) + beta``.

  ``x_hat`` is the instance-normalised input and ``mu_hat`` the standardised channel means
  (:func:`_normalised_channel_means`). ``x``: ``[B, H, W, C]`` -> ``[B, H, W, C]``; ``alpha``, ``gamma``
  (both ``1 + N(0, 0.02^2)`` at init) and ``beta`` (zeros) have shape ``[1, 1, 1, C]``.
  """

  bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    mu, var = _spatial_moments(x)
    x_hat = (x - mu) / jnp.sqrt(var + NORM_EPS)
    channels = x.shape[-1]
    alpha = self.param("alpha", _near_one_init, (1, 1, 1, channels))
    gamma = self.param("gamma", _near_one_init, (1, 1, 1, channels))
    h = gamma * (x_hat + alpha * _normalised_channel_means(mu))
    if self.bias:
      h = h + self.param("beta", nn.initializers.zeros, (1, 1, 1, channels))
    return h


class ConditionalInstanceNorm2dPlus(nn.Module):
  """Conditional InstanceNorm++ (NCSN eq. 13 of appendix A): InstanceNorm++ with per-class parameters.

  ``gamma[y] * (x_hat + alpha[y] * mu_hat) + beta[y]`` where ``y`` is the noise-level index. The three
  per-class vectors are rows of one embedding table ``Embed_0/embedding`` of shape ``[num_classes, 3 C]``
  laid out ``[gamma | alpha | beta]`` (``[num_classes, 2 C]``, ``[gamma | alpha]``, without bias);
  ``gamma`` and ``alpha`` start at ``1 + N(0, 0.02^2)``, ``beta`` at zero.

  Args of ``__call__``: ``x`` ``[B, H, W, C]``, ``y`` int ``[B]`` in ``[0, num_classes)``.
  Returns ``[B, H, W, C]``.
  """

  num_classes: int
  bias: bool = True

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    channels = x.shape[-1]
    n_vectors = 3 if self.bias else 2

    def embedding_init(key, shape, dtype=jnp.float32):
      scales = _near_one_init(key, (shape[0], 2 * channels), dtype)
      shifts = jnp.zeros((shape[0], shape[1] - 2 * channels), dtype)
      return jnp.concatenate([scales, shifts], axis=-1)

    embed = nn.Embed(num_embeddings=self.num_classes, features=n_vectors * channels,
                     embedding_init=embedding_init)
    per_class = embed(y)[:, None, None, :]  # [B, 1, 1, n_vectors * C]
    gamma, alpha = per_class[..., :channels], per_class[..., channels:2 * channels]

    mu, var = _spatial_moments(x)
    x_hat = (x - mu) / jnp.sqrt(var + NORM_EPS)
    h = gamma * (x_hat + alpha * _normalised_channel_means(mu))
    if self.bias:
      h = h + per_class[..., 2 * channels:]
    return h


def get_normalization(name: str, conditional: bool = False, num_classes: int | None = None) -> Callable[[], nn.Module]:
  """Factory ``() -> normalisation module`` for ``model.normalization`` ``name``.

  Unconditional: one of :data:`NORMALIZATIONS` (``GroupNorm`` is flax's with 32 groups, as the original).
  Conditional (NCSN v1): only ``InstanceNorm++``, with ``num_classes`` noise levels.
  """
  if conditional:
    if name != "InstanceNorm++":
      raise ValueError(f"Unknown conditional normalization {name!r}; expected 'InstanceNorm++'.")
    if num_classes is None or num_classes < 1:
      raise ValueError(f"Conditional normalization needs num_classes >= 1, got {num_classes!r}.")
    return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=num_classes)
  factories = {
      "InstanceNorm": InstanceNorm2d,
      "InstanceNorm++": InstanceNorm2dPlus,
      "VarianceNorm": VarianceNorm2d,
      "GroupNorm": functools.partial(nn.GroupNorm, num_groups=GROUP_NORM_GROUPS),
  }
  if name not in factories:
    raise ValueError(f"Unknown normalization {name!r}; expected one of {list(NORMALIZATIONS)}.")
  return factories[name]


def check_group_norm_channels(normalization: str, channels, where: str) -> None:
  """Raise if ``normalization`` is GroupNorm and a channel count in ``channels`` has no 32 equal groups."""
  if normalization != "GroupNorm":
    return
  bad = sorted({c for c in channels if c % GROUP_NORM_GROUPS})
  if bad:
    raise ValueError(f"{where}: GroupNorm with {GROUP_NORM_GROUPS} groups needs channel counts divisible by "
                     f"{GROUP_NORM_GROUPS}, but the network would normalise {bad} channels (choose nf as a "
                     f"multiple of {GROUP_NORM_GROUPS}).")
