"""The noise-conditional Wide-ResNet classifier of Score-SDE's class-conditional CIFAR-10 samples (NHWC).

A port of the original's ``models/wideresnet_noise_conditional.py`` (itself the Flax WRN of Zagoruyko and
Komodakis, arXiv:1605.07146, with BatchNorm replaced by GroupNorm and a noise-level embedding added to
every residual block). Its parameter tree has the original's names, so converted weights map one to one.

The network takes a batch of noisy images ``x_t`` and the marginal standard deviation ``sigma`` of the
noise in them (the original calls it ``ve_noise_scale``: ``sde.marginal_prob(x, t)[1]``) and returns class
logits. It conditions on ``log sigma`` through random Fourier features, as NCSN++ does.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import models

Array = jax.Array

__all__ = ["WideResnet", "WideResnetBlock", "WideResnetGroup", "wrn_depth", "CIFAR10_MEAN", "CIFAR10_STD"]

# The per-channel statistics of CIFAR-10 training images in [0, 1] that the original's ``get_logit_fn``
# subtracts and divides by before the network (models/utils.py).
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)

_NORM_EPS = 1e-5  # GroupNorm epsilon (the original's _BATCHNORM_EPSILON)
_CHANNELS_PER_GROUP = 4  # GroupNorm uses min(C // 4, 32) groups
_MAX_GROUPS = 32
_STEM_CHANNELS = 16  # the first conv, and the width unit of the three groups (16, 32, 64) x channel_multiplier
_GROUP_WIDTHS = (16, 32, 64)
_TEMB_MULT = 4  # the noise embedding MLP is 4 x embedding_size wide

# Kaiming normal with fan-out (gain 2) for the convolutions, as the original.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _dense_out_init(key, shape, dtype=jnp.float32):
  """U[-1/sqrt(n_out), 1/sqrt(n_out)] for the logits layer (the original's ``dense_layer_init_fn``)."""
  limit = 1.0 / np.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * limit


def wrn_depth(blocks_per_group: int) -> int:
  """The WRN depth of ``blocks_per_group`` blocks per group: 3 groups x 2 convs per block, + stem and head."""
  return 6 * blocks_per_group + 4


def _norm(x: Array, name: str, relu: bool = True) -> Array:
  """GroupNorm (+ ReLU): the original's ``activation``."""
  groups = min(x.shape[-1] // _CHANNELS_PER_GROUP, _MAX_GROUPS)
  x = nn.GroupNorm(num_groups=groups, epsilon=_NORM_EPS, name=name)(x)
  return nn.relu(x) if relu else x


def _output_add(block_x: Array, orig_x: Array) -> Array:
  """``block_x + orig_x``, the shortcut average-pooled and zero-padded in channels where the shapes differ."""
  stride = orig_x.shape[-2] // block_x.shape[-2]
  if block_x.shape[-1] != orig_x.shape[-1]:
    orig_x = nn.avg_pool(orig_x, (stride, stride), (stride, stride))
    extra = block_x.shape[-1] - orig_x.shape[-1]
    orig_x = jnp.pad(orig_x, [(0, 0), (0, 0), (0, 0), (0, extra)])
  return block_x + orig_x


class WideResnetBlock(nn.Module):
  """Pre-activation residual block with the noise embedding added after its first convolution."""

  channels: int
  strides: tuple[int, int] = (1, 1)
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None) -> Array:  # x [B, H, W, C], temb [B, E]
    if self.activate_before_residual:
      x = _norm(x, "init_bn")
      orig_x = block_x = x
    else:
      orig_x = x
      block_x = _norm(x, "init_bn")
    block_x = nn.Conv(self.channels, (3, 3), self.strides, padding="SAME", use_bias=False, kernel_init=_conv_init,
                      name="conv1")(block_x)
    if temb is not None:
      block_x = block_x + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
    block_x = _norm(block_x, "bn_2")
    block_x = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                      name="conv2")(block_x)
    return _output_add(block_x, orig_x)


class WideResnetGroup(nn.Module):
  """``blocks_per_group`` blocks of one width; the first one strides."""

  blocks_per_group: int
  channels: int
  strides: tuple[int, int] = (1, 1)
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None) -> Array:
    for i in range(self.blocks_per_group):
      x = WideResnetBlock(self.channels, self.strides if i == 0 else (1, 1),
                          activate_before_residual=self.activate_before_residual and i == 0)(x, temb)
    return x


class WideResnet(nn.Module):
  """Noise-conditional WRN-(6 ``blocks_per_group`` + 4)-``channel_multiplier``: ``(x, sigma) -> logits``.

  The original's CIFAR-10 classifier is WRN-28-10: ``blocks_per_group=4``, ``channel_multiplier=10``,
  ``num_outputs=10`` (models/utils.py ``create_classifier``), embedding 128 Fourier features of scale 16.

  Attributes:
    blocks_per_group: residual blocks in each of the three groups.
    channel_multiplier: the widening factor k (group widths 16k, 32k, 64k).
    num_outputs: number of classes.
    embedding_size: random Fourier frequencies of ``log sigma`` (features: twice that).
    fourier_scale: standard deviation of those frequencies.
    input_mean, input_std: per-channel statistics subtracted from and divided into the input before the
      network (the original's preprocessing, :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`); empty = none.
  """

  blocks_per_group: int = 4
  channel_multiplier: int = 10
  num_outputs: int = 10
  embedding_size: int = 128
  fourier_scale: float = 16.0
  input_mean: Sequence[float] = ()
  input_std: Sequence[float] = ()

  @nn.compact
  def __call__(self, x: Array, sigma: Array, train: bool = False) -> Array:
    """Logits ``[B, num_outputs]`` of ``x [B, H, W, C]`` at noise levels ``sigma [B]`` (> 0).

    ``train`` is accepted for the score networks' call signature; the network has no dropout nor batch
    statistics, so it changes nothing.
    """
    del train
    if self.input_mean:
      x = (x - jnp.asarray(self.input_mean, x.dtype)[None, None, None]) / jnp.asarray(self.input_std,
                                                                                     x.dtype)[None, None, None]
    # Per-image standardisation, the std floored at 1 / sqrt(number of values) (as tf.image's). The floor is
    # applied to the variance, which gives the same std and keeps the gradient finite on a constant image.
    n_values = np.prod(x.shape[1:])
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / jnp.sqrt(jnp.maximum(var, 1.0 / n_values))
    temb = models.GaussianFourierProjection(self.embedding_size, self.fourier_scale)(jnp.log(sigma))
    temb = nn.Dense(self.embedding_size * _TEMB_MULT)(temb)
    temb = nn.Dense(self.embedding_size * _TEMB_MULT)(nn.swish(temb))

    x = nn.Conv(_STEM_CHANNELS, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init, name="init_conv")(x)
    for i, width in enumerate(_GROUP_WIDTHS):
      x = WideResnetGroup(self.blocks_per_group, width * self.channel_multiplier, (1, 1) if i == 0 else (2, 2),
                          activate_before_residual=i == 0)(x, temb)
    x = _norm(x, "pre-pool-bn")
    x = jnp.mean(x, axis=(1, 2))  # global average pool: [B, C]
    return nn.Dense(self.num_outputs, kernel_init=_dense_out_init)(x)
