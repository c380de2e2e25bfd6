"""Score networks and the network-as-score-function wrapper.

The toy default uses :class:`ScoreMLP`, a time-conditioned MLP for flat data ``[B, D]``. Image networks
(NCSN++, DDPM++, ...) arrive with the networks issue behind the same :func:`get_score_fn`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sde_lib

Array = jax.Array

__all__ = ["GaussianFourierProjection", "ScoreMLP", "get_model_fn", "get_score_fn"]


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a scalar time, ``[sin(2 pi W log t), cos(2 pi W log t)]`` (NCSN++ style)."""

  embedding_size: int = 64
  scale: float = 16.0

  @nn.compact
  def __call__(self, t: Array) -> Array:  # t: [B] -> [B, 2 * embedding_size]
    W = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    W = jax.lax.stop_gradient(W)  # fixed random features, as in the original
    proj = t[:, None] * W[None, :] * 2 * np.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class ScoreMLP(nn.Module):
  """Time-conditioned MLP ``(x [B, D], label [B]) -> [B, D]`` for low-dimensional data.

  The label is a continuous noise label (``log sigma`` or ``t``, see :func:`get_score_fn`), embedded with
  Gaussian Fourier features and added to every hidden layer.
  """

  features: Sequence[int] = (128, 128, 128)
  embedding_size: int = 32
  fourier_scale: float = 16.0

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
    temb = GaussianFourierProjection(self.embedding_size, self.fourier_scale)(labels)
    temb = nn.Dense(self.features[0])(temb)
    h = x
    for width in self.features:
      h = nn.Dense(width)(h) + nn.Dense(width, use_bias=False)(temb)
      h = nn.silu(h)
    return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)


def get_model_fn(model: nn.Module, variables, train: bool = False):
  """The raw network as ``model_fn(x, labels)``."""
  return lambda x, labels: model.apply(variables, x, labels, train=train)


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, variables, train: bool = False, continuous: bool = True):
  """The network as a batched score ``score_fn(x [B, ...], t [B])``.

  The network predicts ``-s(t) score`` (the scaled noise ``z`` of eq. 7), so the score is its output
  divided by the marginal std ``s(t)``: a parameterisation that keeps the target O(1) at every noise level.
  The network sees the time ``t`` for VP/sub-VP and ``log s(t)`` for VE (whose std spans decades).
  """
  if not continuous:
    raise NotImplementedError("discrete-time (SMLD/DDPM label) score functions come with the networks issue; "
                              "use continuous=True.")
  model_fn = get_model_fn(model, variables, train)

  def score_fn(x, t):
    std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    labels = jnp.log(std) if isinstance(sde, sde_lib.VESDE) else t
    out = model_fn(x, labels)
    return -jax.vmap(jnp.divide)(out, std)

  return score_fn
