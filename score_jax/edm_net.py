"""A score_jax network F inside EDM's preconditioning: ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``.

:class:`EDMPrecond` is a drop-in score network of a continuous VE SDE: it takes the noise level sigma as its
label (what :func:`score_jax.models.get_score_fn` feeds a VE network) and returns the score
``(D(x; sigma) - x) / sigma^2`` (Tweedie, EDM eq. 3), so every score_jax sampler, the likelihood and the
launcher's evaluation run an EDM-trained model unchanged. ``output='denoised'`` (``module.clone``) returns D
itself, which EDM's losses take.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax import edm

Array = jax.Array

__all__ = ["EDMPrecond", "LABEL_MODES"]

# How the inner network sees EDM's noise label c_noise: 'positional' networks (DDPM++) embed their label
# sinusoidally, as EDM's SongUNet embeds c_noise; 'fourier' networks (NCSN++) embed log(label), so they get
# exp(c_noise) and embed c_noise itself, as EDM's NCSN++ does.
LABEL_MODES = ("positional", "fourier")


class EDMPrecond(nn.Module):
  """``inner`` wrapped in the preconditioning ``kind`` ('vp', 've', 'edm'; EDM Table 1).

  Attributes:
    inner: the raw network ``F(x [B, ...], labels [B], train=...) -> [B, ...]`` (built without
      ``scale_by_sigma``, on centered data).
    kind: the preconditioning.
    precond_params: ``((name, value), ...)`` of :func:`score_jax.edm.precond_coefficients` (hashable).
    label_mode: one of :data:`LABEL_MODES`.
    output: ``'score'`` (``(D - x) / sigma^2``) or ``'denoised'`` (D).
  """

  inner: Any
  kind: str = "edm"
  precond_params: tuple = ()
  label_mode: str = "positional"
  output: str = "score"

  def denoise(self, x: Array, sigma: Array, train: bool = False, class_labels: Array | None = None) -> Array:
    """``D(x [B, ...]; sigma [B])``, of the classes ``class_labels [B]`` for a class-conditional inner network."""
    if self.label_mode not in LABEL_MODES:
      raise ValueError(f"label_mode={self.label_mode!r}; expected one of {list(LABEL_MODES)}.")
    extra = {} if class_labels is None else {"class_labels": class_labels}
    model_fn = lambda x_in, c_noise: self.inner(x_in, jnp.exp(c_noise) if self.label_mode == "fourier" else c_noise,
                                                train=train, **extra)
    return edm.precondition(self.kind, model_fn, **dict(self.precond_params))(x, sigma)

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False, class_labels: Array | None = None) -> Array:
    sigma = jnp.asarray(labels, x.dtype)  # [B]
    D = self.denoise(x, sigma, train, class_labels)
    if self.output == "denoised":
      return D
    if self.output != "score":
      raise ValueError(f"output={self.output!r}; expected 'score' or 'denoised'.")
    return jax.vmap(jnp.multiply)(1 / sigma**2, D - x)
