"""Score networks and the network-as-score-function wrapper.

The toy default uses :class:`ScoreMLP`, a time-conditioned MLP for flat data ``[B, D]``; the image networks
(NCSN++, DDPM++, DDPM, NCSNv2, NCSN) are in :mod:`score_jax.nets`. Every network becomes a score through the
same :func:`get_score_fn` (the original's time-label conventions).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sde_lib

Array = jax.Array

__all__ = [
    "GaussianFourierProjection", "ScoreMLP", "timestep_embedding", "get_model_fn", "get_score_fn", "make_score_fn",
    "VP_CONTINUOUS_LABEL_SCALE",
]


# Continuously trained VP / sub-VP networks see t in [0, 1] scaled to the DDPM timestep range [0, 999],
# so that their timestep embedding is the one of the discrete DDPM with 1000 steps.
VP_CONTINUOUS_LABEL_SCALE = 999.0


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


def timestep_embedding(timesteps: Array, embedding_dim: int, max_positions: int = 10_000) -> Array:
  """Sinusoidal embedding ``[B, embedding_dim]`` of (possibly fractional) timesteps, as in DDPM/Transformers."""
  half = embedding_dim // 2
  freqs = jnp.exp(-math.log(max_positions) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  return jnp.pad(emb, ((0, 0), (0, embedding_dim % 2)))


class ScoreMLP(nn.Module):
  """Time-conditioned MLP ``(x [B, D], labels [B]) -> [B, D]`` for low-dimensional data.

  It takes the labels of the paper's networks (see :func:`get_score_fn`). With ``scale_by_sigma`` (VE)
  the label is the noise level ``sigma``: the network is conditioned on ``log sigma`` and its output is
  divided by ``sigma`` (as NCSN++). Otherwise (VP / sub-VP) the label is ``t * 999`` and the output is
  the scaled noise (as DDPM++); the network is conditioned on ``t`` itself. The condition is embedded
  by Gaussian Fourier features (``'fourier'``, smooth in ``t`` for a small ``fourier_scale``, which keeps
  the probability-flow ODE cheap to solve) or by DDPM's sinusoidal embedding of the label
  (``'positional'``).
  """

  features: Sequence[int] = (128, 128, 128)
  embedding_size: int = 32
  embedding_type: str = "fourier"
  fourier_scale: float = 4.0
  scale_by_sigma: bool = False

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
    cond = jnp.log(labels) if self.scale_by_sigma else labels / VP_CONTINUOUS_LABEL_SCALE
    if self.embedding_type == "fourier":
      temb = GaussianFourierProjection(self.embedding_size, self.fourier_scale)(cond)
    elif self.embedding_type == "positional":
      temb = timestep_embedding(labels, 2 * self.embedding_size)
    else:
      raise ValueError(f"Unknown embedding_type {self.embedding_type!r}; expected 'fourier' or 'positional'.")
    temb = nn.Dense(self.features[0])(temb)
    h = x
    for width in self.features:
      h = nn.Dense(width)(h) + nn.Dense(width, use_bias=False)(temb)
      h = nn.silu(h)
    out = nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)
    if self.scale_by_sigma:
      out = out / labels[:, None]
    return out


def get_model_fn(model: nn.Module, variables, train: bool = False, rng: Array | None = None,
                 class_labels: Array | None = None):
  """The raw network as ``model_fn(x, labels)``.

  Args:
    model, variables: the flax module and its variables.
    train: training mode (dropout on).
    rng: the 'dropout' PRNG key for ``train=True`` networks with dropout; None for no rng.
    class_labels: ``[B]`` class labels of a class-conditional network (``model.label_dim > 0``; the value
      ``label_dim`` is the null class); None passes none (the null class for a conditional network).
  """
  rngs = None if rng is None else {"dropout": rng}
  extra = {} if class_labels is None else {"class_labels": class_labels}
  return lambda x, labels: model.apply(variables, x, labels, train=train, rngs=rngs, **extra)


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, variables, train: bool = False, continuous: bool = True,
                 rng: Array | None = None, class_labels: Array | None = None):
  """The network as a batched score ``score_fn(x [B, ...], t [B])``, with the original's conventions.

  - VE, continuous: the network gets the noise level ``sigma(t)`` and outputs the score directly (it
    divides by sigma itself, ``scale_by_sigma``).
  - VE, discrete: the label is the SMLD index of the noise level, ``round((T - t) (N - 1))`` (0 = largest).
  - VP / sub-VP, continuous (and sub-VP always): the label is ``t * 999``; the network predicts the noise,
    so the score is ``-output / s(t)`` with the marginal std ``s(t)``.
  - VP, discrete: the label is ``t (N - 1)`` and the std is DDPM's ``sqrt(1 - alphabar)`` at that index.

  ``rng`` and ``class_labels`` are those of :func:`get_model_fn`. :func:`make_score_fn` wraps any raw ``model_fn``.
  """
  return make_score_fn(sde, get_model_fn(model, variables, train, rng, class_labels), continuous)


def make_score_fn(sde: sde_lib.SDE, model_fn, continuous: bool = True):
  """The raw network ``model_fn(x [B, ...], labels [B])`` as a score ``score_fn(x, t)`` (see :func:`get_score_fn`)."""
  if isinstance(sde, sde_lib.VESDE):
    def score_fn(x, t):
      if continuous:
        labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
      return model_fn(x, labels)
    return score_fn

  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    def score_fn(x, t):
      if continuous or isinstance(sde, sde_lib.subVPSDE):
        labels = t * VP_CONTINUOUS_LABEL_SCALE
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = t * (sde.N - 1)
        std = jnp.asarray(sde.sqrt_1m_alphas_cumprod)[labels.astype(jnp.int32)]
      return -jax.vmap(jnp.divide)(model_fn(x, labels), std)
    return score_fn

  raise ValueError(f"Unsupported SDE {type(sde).__name__}; expected VESDE, VPSDE or subVPSDE.")
