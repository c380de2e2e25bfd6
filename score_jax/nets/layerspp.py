"""The NCSN++ / DDPM++ blocks (Song et al. 2021, appendix H), NHWC.

Class names are part of the parameter paths (``ResnetBlockBigGANpp_3/Conv_1/kernel``) and follow the
original Flax code so that its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax.models import GaussianFourierProjection
from score_jax.nets import up_or_down_sampling as ups
from score_jax.nets.layers import NIN, conv1x1, conv3x3, default_init, group_norm_groups, spatial_self_attention

Array = jax.Array

__all__ = [
    "GaussianFourierProjection", "COMBINE_METHODS", "Combine", "AttnBlockpp", "Upsample", "Downsample",
    "ResnetBlockDDPMpp", "ResnetBlockBigGANpp", "group_norm", "merge_residual",
]

COMBINE_METHODS = ("cat", "sum")
# Residual sums are divided by sqrt(2) with skip_rescale, which keeps their variance that of each branch.
SKIP_RESCALE_DIVISOR = np.sqrt(2.0)


def group_norm(x: Array) -> Array:
  """NCSN++'s GroupNorm (``min(C // 4, 32)`` groups), created in the calling module's scope."""
  return nn.GroupNorm(num_groups=group_norm_groups(x.shape[-1]))(x)


def merge_residual(x: Array, h: Array, skip_rescale: bool) -> Array:
  """``x + h``, divided by sqrt(2) when ``skip_rescale``."""
  return (x + h) / SKIP_RESCALE_DIVISOR if skip_rescale else x + h


class Combine(nn.Module):
  """Merge a skip input ``x [B, H, W, Cx]`` into ``y [B, H, W, Cy]`` after a 1x1 conv of ``x`` to Cy channels.

  ``method='cat'`` gives ``[B, H, W, 2 Cy]``, ``'sum'`` gives ``[B, H, W, Cy]``.
  """

  method: str = "cat"

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    if self.method not in COMBINE_METHODS:
      raise ValueError(f"Unknown Combine method {self.method!r}; expected one of {COMBINE_METHODS}.")
    h = conv1x1(x, y.shape[-1])
    return jnp.concatenate([h, y], axis=-1) if self.method == "cat" else h + y


class AttnBlockpp(nn.Module):
  """DDPM self-attention with NCSN++'s GroupNorm and optional skip rescaling; ``[B, H, W, C] -> same``."""

  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    h = group_norm(x)
    h = spatial_self_attention(h, NIN(c), NIN(c), NIN(c))
    return merge_residual(x, NIN(c, init_scale=self.init_scale)(h), self.skip_rescale)


class Upsample(nn.Module):
  """Upsampling by 2, ``[B, H, W, C] -> [B, 2H, 2W, out_ch or C]``.

  Without ``fir``: nearest neighbour, then a 3x3 conv if ``with_conv``. With ``fir``: FIR upsampling, or
  (``with_conv``) the fused FIR transposed 3x3 convolution :class:`~score_jax.nets.up_or_down_sampling.Conv2d`.
  """

  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    out_ch = self.out_ch or c
    if not self.fir:
      y = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
      if self.with_conv:
        y = conv3x3(y, out_ch)
    elif self.with_conv:
      y = ups.Conv2d(out_ch, kernel=3, up=True, resample_kernel=tuple(self.fir_kernel),
                     kernel_init=default_init())(x)
    else:
      y = ups.upsample_2d(x, self.fir_kernel, factor=2)
    if y.shape != (b, 2 * h, 2 * w, out_ch):
      raise ValueError(f"Upsample: got {y.shape} from {x.shape}; expected {(b, 2 * h, 2 * w, out_ch)} "
                       "(out_ch needs with_conv).")
    return y


class Downsample(nn.Module):
  """Downsampling by 2, ``[B, H, W, C] -> [B, H/2, W/2, out_ch or C]``.

  Without ``fir``: a stride-2 3x3 conv (``with_conv``) or 2x2 average pooling. With ``fir``: the fused FIR
  + stride-2 3x3 conv (``with_conv``) or FIR downsampling.
  """

  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    out_ch = self.out_ch or c
    if not self.fir:
      if self.with_conv:
        y = conv3x3(x, out_ch, stride=2)
      else:
        y = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
    elif self.with_conv:
      y = ups.Conv2d(out_ch, kernel=3, down=True, resample_kernel=tuple(self.fir_kernel),
                     kernel_init=default_init())(x)
    else:
      y = ups.downsample_2d(x, self.fir_kernel, factor=2)
    if y.shape != (b, h // 2, w // 2, out_ch):
      raise ValueError(f"Downsample: got {y.shape} from {x.shape}; expected {(b, h // 2, w // 2, out_ch)} "
                       "(out_ch needs with_conv).")
    return y


def _add_temb(h: Array, temb: Optional[Array], act: Callable[[Array], Array]) -> Array:
  """Add a per-channel bias ``Dense(act(temb))`` [B, C] to ``h [B, H, W, C]`` (in the caller's scope)."""
  if temb is None:
    return h
  return h + nn.Dense(h.shape[-1], kernel_init=default_init())(act(temb))[:, None, None, :]


class ResnetBlockDDPMpp(nn.Module):
  """DDPM++ residual block ``x [B, H, W, Cin], temb [B, T] -> [B, H, W, out_ch]``.

  Attributes:
    act: activation.
    out_ch: output channels (default: Cin).
    conv_shortcut: 3x3 conv instead of NIN on the shortcut when channels change.
    dropout: dropout rate (needs the 'dropout' rng when ``train``).
    skip_rescale: divide the residual sum by sqrt(2).
    init_scale: initialiser scale of the last conv (0: near zero).
  """

  act: Callable[[Array], Array]
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = conv3x3(self.act(group_norm(x)), out_ch)
    h = _add_temb(h, temb, self.act)
    h = self.act(group_norm(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale)
    if c != out_ch:
      x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return merge_residual(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN-style residual block, optionally resampling by 2 (``up`` / ``down``), as in NCSN++.

  ``x [B, H, W, Cin], temb [B, T] -> [B, H', W', out_ch]`` with H' = 2H (up), H / 2 (down) or H.

  Attributes:
    act: activation.
    up, down: resample both branches by 2 (FIR if ``fir``, else nearest / average pooling).
    out_ch: output channels (default: Cin).
    dropout: dropout rate (needs the 'dropout' rng when ``train``).
    fir, fir_kernel: FIR resampling and its 1-D kernel.
    skip_rescale: divide the residual sum by sqrt(2).
    init_scale: initialiser scale of the last conv (0: near zero).
  """

  act: Callable[[Array], Array]
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0

  def _resample(self, x: Array) -> Array:
    if self.up:
      return ups.upsample_2d(x, self.fir_kernel, factor=2) if self.fir else ups.naive_upsample_2d(x, factor=2)
    if self.down:
      return ups.downsample_2d(x, self.fir_kernel, factor=2) if self.fir else ups.naive_downsample_2d(x, factor=2)
    return x

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
    if self.up and self.down:
      raise ValueError("ResnetBlockBigGANpp: up and down are exclusive.")
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = self.act(group_norm(x))
    h, x = self._resample(h), self._resample(x)
    h = conv3x3(h, out_ch)
    h = _add_temb(h, temb, self.act)
    h = self.act(group_norm(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale)
    if c != out_ch or self.up or self.down:
      x = conv1x1(x, out_ch)
    return merge_residual(x, h, self.skip_rescale)
