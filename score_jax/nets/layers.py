"""DDPM-style building blocks shared by the DDPM and NCSN++ / DDPM++ networks (NHWC).

Layer and parameter names follow the original Flax code, so that parameter trees (``Conv_0/kernel``,
``NIN_0/W``, ...) match its checkpoints. The helpers :func:`conv1x1` and :func:`conv3x3` create an
``nn.Conv`` in the calling module's scope (they are called inside ``@nn.compact`` methods), which is what
gives the parent module its ``Conv_<i>`` entries.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.models import timestep_embedding

Array = jax.Array

__all__ = [
    "ACTIVATIONS", "get_act", "default_init", "conv1x1", "conv3x3", "NIN", "spatial_self_attention", "AttnBlock",
    "Upsample", "Downsample",
    "ResnetBlockDDPM", "timestep_embedding", "group_norm_groups", "check_group_norm", "CLASS_EMBED_NAME",
    "check_label_dim", "add_class_embedding",
]

# variance_scaling rejects a zero scale; the original substitutes this tiny one for "zero-initialised"
# layers (the last conv of a residual branch), so that the kernels are ~0 but still random.
ZERO_INIT_SCALE = 1e-10
# Negative slope of the 'lrelu' activation.
LEAKY_RELU_SLOPE = 0.2
# NCSN++ GroupNorm: one group per 4 channels, at most this many groups.
MAX_GROUPS = 32
CHANNELS_PER_GROUP = 4

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=LEAKY_RELU_SLOPE),
    "swish": nn.swish,
}


def get_act(name: str) -> Callable[[Array], Array]:
  """The activation ``model.nonlinearity`` names (case-insensitive): elu, relu, lrelu, swish."""
  key = str(name).lower()
  if key not in ACTIVATIONS:
    raise ValueError(f"Unknown nonlinearity {name!r}; expected one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[key]


def default_init(scale: float = 1.0) -> Callable:
  """DDPM's initialiser: variance scaling with ``fan_avg`` and a uniform distribution (scale 0 -> 1e-10)."""
  return nn.initializers.variance_scaling(ZERO_INIT_SCALE if scale == 0 else scale, "fan_avg", "uniform")


# The Dense layer of a class-conditional network's label embedding (named, so that the auto-numbered Dense layers of
# the noise embedding keep their names and an unconditional network's variables are unchanged).
CLASS_EMBED_NAME = "class_embed"


def check_label_dim(label_dim: int, conditional: bool, where: str) -> None:
  """``label_dim`` is 0 (unconditional) or the number of classes K >= 2 of a noise-conditional network."""
  if isinstance(label_dim, bool) or not isinstance(label_dim, int) or label_dim < 0 or label_dim == 1:
    raise ValueError(f"{where}: label_dim={label_dim!r}; expected 0 (no class labels) or the number of classes (>= 2).")
  if label_dim and not conditional:
    raise ValueError(f"{where}: label_dim={label_dim} needs the noise-level embedding (conditional=True), to which "
                     "the class embedding is added.")


def add_class_embedding(emb: Array, class_labels: Array | None, label_dim: int) -> Array:
  """``emb [B, D]`` plus a learned embedding of the class labels (EDM's ``map_label``), in the calling module.

  ``class_labels [B]`` are integers in ``[0, label_dim]``; ``label_dim`` is the null class of classifier-free
  guidance, whose one-hot vector is zero (so its embedding is the layer's bias, zero at initialisation). None
  means the null class for every example. As EDM, the one-hot vector is scaled by ``sqrt(label_dim)`` and mapped
  by a Dense layer (Xavier-uniform kernel, zero bias) to the width of the noise embedding, before its MLP.
  """
  if class_labels is None:
    class_labels = jnp.full(emb.shape[:1], label_dim, jnp.int32)
  class_labels = jnp.asarray(class_labels)
  if class_labels.shape != emb.shape[:1]:
    raise ValueError(f"class_labels must have shape {emb.shape[:1]} (one per example); got {class_labels.shape}.")
  one_hot = jax.nn.one_hot(class_labels, label_dim, dtype=emb.dtype)  # the null class label_dim -> all zeros
  dense = nn.Dense(emb.shape[-1], kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros,
                   name=CLASS_EMBED_NAME)
  return emb + dense(one_hot * jnp.sqrt(jnp.asarray(label_dim, emb.dtype)))


def group_norm_groups(channels: int) -> int:
  """NCSN++'s GroupNorm group count for ``channels`` channels: ``min(channels // 4, 32)``."""
  return min(channels // CHANNELS_PER_GROUP, MAX_GROUPS)


def check_group_norm(channels: int, where: str = "") -> None:
  """Raise a ValueError if NCSN++'s GroupNorm cannot split ``channels`` into equal groups."""
  groups = group_norm_groups(channels)
  if groups < 1 or channels % groups:
    raise ValueError(f"GroupNorm{' in ' + where if where else ''}: {channels} channels cannot be split into "
                     f"min(C // {CHANNELS_PER_GROUP}, {MAX_GROUPS}) = {groups} equal groups; expected at least "
                     f"{CHANNELS_PER_GROUP} channels and a multiple of the group count.")


def _conv(x: Array, out_ch: int, size: int, stride: int, bias: bool, dilation: int, init_scale: float) -> Array:
  return nn.Conv(out_ch, kernel_size=(size, size), strides=(stride, stride), padding="SAME", use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros)(x)


def conv1x1(x: Array, out_ch: int, stride: int = 1, bias: bool = True, dilation: int = 1,
            init_scale: float = 1.0) -> Array:
  """1x1 convolution ``[B, H, W, Cin] -> [B, H / stride, W / stride, out_ch]`` with DDPM initialisation."""
  return _conv(x, out_ch, 1, stride, bias, dilation, init_scale)


def conv3x3(x: Array, out_ch: int, stride: int = 1, bias: bool = True, dilation: int = 1,
            init_scale: float = 1.0) -> Array:
  """3x3 'SAME' convolution ``[B, H, W, Cin] -> [B, H / stride, W / stride, out_ch]``, DDPM initialisation."""
  return _conv(x, out_ch, 3, stride, bias, dilation, init_scale)


class NIN(nn.Module):
  """Per-pixel dense layer ("network in network") ``[..., Cin] -> [..., num_units]``; params ``W``, ``b``."""

  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    W = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    y = jnp.einsum("...i,ij->...j", x, W)
    return y + jnp.reshape(b, (1,) * (y.ndim - 1) + (self.num_units,))


def spatial_self_attention(x: Array, q_fn, k_fn, v_fn) -> Array:
  """Softmax attention of every pixel over all pixels; ``x [B, H, W, C]`` -> ``[B, H, W, C]``.

  ``q_fn``, ``k_fn``, ``v_fn`` map ``[B, H, W, C] -> [B, H, W, C]``; logits are scaled by ``C ** -0.5``.
  """
  b, h, w, c = x.shape
  q, k, v = q_fn(x), k_fn(x), v_fn(x)
  logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (c ** -0.5)  # [B, H, W, H, W]
  weights = jax.nn.softmax(jnp.reshape(logits, (b, h, w, h * w)), axis=-1)
  return jnp.einsum("bhwHW,bHWc->bhwc", jnp.reshape(weights, (b, h, w, h, w)), v)


class AttnBlock(nn.Module):
  """DDPM self-attention block ``x + NIN(attention(normalize(x)))``, ``[B, H, W, C] -> [B, H, W, C]``.

  Attributes:
    normalize: factory of the normalisation module (DDPM: ``nn.GroupNorm``, 32 groups).
  """

  normalize: Callable[[], nn.Module] = nn.GroupNorm

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    h = self.normalize()(x)
    h = spatial_self_attention(h, NIN(c), NIN(c), NIN(c))
    return x + NIN(c, init_scale=0.0)(h)


class Upsample(nn.Module):
  """DDPM nearest-neighbour upsampling by 2, optionally followed by a 3x3 conv; ``[B, H, W, C] -> [B, 2H, 2W, C]``."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
    return conv3x3(x, c) if self.with_conv else x


class Downsample(nn.Module):
  """DDPM downsampling by 2: a stride-2 3x3 conv or 2x2 average pooling; ``[B, H, W, C] -> [B, H/2, W/2, C]``."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.with_conv:
      return conv3x3(x, x.shape[-1], stride=2)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block ``[B, H, W, Cin], temb [B, T] -> [B, H, W, out_ch]``.

  Attributes:
    act: activation.
    normalize: factory of the normalisation module (DDPM: ``nn.GroupNorm``).
    out_ch: output channels (default: Cin).
    conv_shortcut: project the shortcut with a 3x3 conv instead of a NIN when channels change.
    dropout: dropout rate (the 'dropout' rng is needed when ``train``).
  """

  act: Callable[[Array], Array]
  normalize: Callable[[], nn.Module] = nn.GroupNorm
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = conv3x3(self.act(self.normalize()(x)), out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(self.normalize()(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=0.0)
    if c != out_ch:
      x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return x + h
