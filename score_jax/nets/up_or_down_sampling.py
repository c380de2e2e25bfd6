"""FIR resampling of NHWC images (StyleGAN2's ``upfirdn2d``) in pure JAX, as NCSN++ uses it.

A 1-D FIR kernel ``k`` (NCSN++: ``(1, 3, 3, 1)``) becomes the separable 2-D filter ``outer(k, k)``
normalised to sum 1, so a constant image keeps its value (times ``gain``). Upsampling inserts zeros and
filters with ``factor**2`` times that filter; downsampling filters and keeps every ``factor``-th pixel.
The fused variants apply a 3x3 (or any odd) convolution at the same time, padding only once.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "setup_kernel", "upfirdn2d", "upsample_2d", "downsample_2d", "upsample_conv_2d", "conv_downsample_2d",
    "naive_upsample_2d", "naive_downsample_2d", "Conv2d",
]

_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
  """The 2-D FIR filter ``[K, K]`` (float32, sums to 1) of a 1-D ``[K]`` (separable) or 2-D ``[K, K]`` kernel."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"FIR kernel must be 1-D or square 2-D; got shape {k.shape}.")
  return k / np.sum(k)


def upfirdn2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Array:
  """Upsample by zero insertion, pad, convolve with a 2-D FIR filter, downsample; each channel separately.

  Args:
    x: ``[B, H, W, C]`` images.
    k: ``[K, K]`` FIR filter (applied as a true convolution, i.e. flipped).
    up: zeros are inserted after every pixel so that each axis grows ``up``-fold.
    down: keep every ``down``-th output pixel.
    pad: ``(before, after)`` zero padding of both spatial axes after upsampling; negative values crop.

  Returns:
    ``[B, (H * up + pad[0] + pad[1] - K) // down + 1, ..., C]`` (same rule for W).
  """
  p0, p1 = pad
  zero = jnp.zeros((), x.dtype)
  # Zero insertion is interior padding; the `up - 1` zeros after the last pixel go with the edge padding.
  # lax.pad crops for negative edge padding.
  spatial = (p0, p1 + up - 1, up - 1)
  x = jax.lax.pad(x, zero, ((0, 0, 0), spatial, spatial, (0, 0, 0)))
  factors = _separable_factors(k)
  if factors is not None:
    # Two 1-D filters as sums of strided slices: elementwise work that XLA fuses, where a depthwise
    # convolution (feature_group_count=C) runs far below the speed of a dense one on CPU backends.
    rows, cols = factors
    return _fir_1d(_fir_1d(x, rows[::-1], 1, down), cols[::-1], 2, down)
  c = x.shape[-1]
  w = jnp.asarray(np.ascontiguousarray(k[::-1, ::-1]), dtype=x.dtype)
  w = jnp.tile(w[:, :, None, None], (1, 1, 1, c))  # [K, K, 1, C]: one filter per channel
  x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="VALID", dimension_numbers=_NHWC_HWIO,
                                   feature_group_count=c)
  return x[:, ::down, ::down, :]


def _separable_factors(k: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """``(rows, cols)`` with ``outer(rows, cols) == k`` (to float32 rounding), or None if ``k`` is not rank 1."""
  k = np.asarray(k, np.float64)
  total = k.sum()
  if total == 0:
    return None
  rows, cols = k.sum(axis=1), k.sum(axis=0) / total
  if not np.allclose(np.outer(rows, cols), k, rtol=1e-6, atol=1e-7 * np.abs(k).max()):
    return None
  return rows, cols


def _fir_1d(x: Array, taps: np.ndarray, axis: int, down: int) -> Array:
  """``out[i] = sum_t taps[t] x[down i + t]`` along ``axis`` (a correlation; 'valid' outputs only)."""
  n_out = (x.shape[axis] - len(taps)) // down + 1
  out = None
  for t, tap in enumerate(taps):
    if tap == 0:
      continue
    term = jax.lax.slice_in_dim(x, t, t + down * (n_out - 1) + 1, stride=down, axis=axis) * jnp.asarray(tap, x.dtype)
    out = term if out is None else out + term
  if out is None:
    shape = list(x.shape)
    shape[axis] = n_out
    out = jnp.zeros(shape, x.dtype)
  return out


def upsample_2d(x: Array, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1.0) -> Array:
  """FIR upsampling ``[B, H, W, C] -> [B, H * factor, W * factor, C]``; ``k=None`` is nearest neighbour."""
  k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1.0) -> Array:
  """FIR downsampling ``[B, H, W, C] -> [B, H // factor, W // factor, C]``; ``k=None`` is average pooling."""
  k = setup_kernel([1] * factor if k is None else k) * gain
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: Array, w: Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                     gain: float = 1.0) -> Array:
  """Fused FIR upsampling and convolution ``[B, H, W, Cin] -> [B, H * factor, W * factor, Cout]``.

  A stride-``factor`` transposed convolution with ``w [kh, kw, Cin, Cout]`` (kh == kw, odd), whose
  ``[B, factor (H - 1) + kh, ...]`` output is then FIR-filtered back to ``factor * H``.
  """
  kh, kw, _, _ = w.shape
  if kh != kw:
    raise ValueError(f"upsample_conv_2d needs a square kernel; got {kh}x{kw}.")
  k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
  p = (k.shape[0] - factor) - (kw - 1)
  # A transposed convolution is a correlation of the zero-inserted input, padded by kw - 1, with w.
  x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=((kh - 1, kh - 1), (kw - 1, kw - 1)),
                                   lhs_dilation=(factor, factor), dimension_numbers=_NHWC_HWIO)
  return upfirdn2d(x, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: Array, w: Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                       gain: float = 1.0) -> Array:
  """Fused FIR filtering and strided convolution ``[B, H, W, Cin] -> [B, H // factor, W // factor, Cout]``."""
  kh, kw, _, _ = w.shape
  if kh != kw:
    raise ValueError(f"conv_downsample_2d needs a square kernel; got {kh}x{kw}.")
  k = setup_kernel([1] * factor if k is None else k) * gain
  p = (k.shape[0] - factor) + (kw - 1)
  x = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
  return jax.lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding="VALID",
                                      dimension_numbers=_NHWC_HWIO)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling ``[B, H, W, C] -> [B, H * factor, W * factor, C]``."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
  """Average pooling over ``factor x factor`` blocks ``[B, H, W, C] -> [B, H // factor, W // factor, C]``."""
  b, h, w, c = x.shape
  return jnp.mean(jnp.reshape(x, (b, h // factor, factor, w // factor, factor, c)), axis=(2, 4))


class Conv2d(nn.Module):
  """Convolution with optional fused FIR up- or downsampling by 2 (StyleGAN2's ``Conv2d``).

  Parameters ``weight [kernel, kernel, Cin, fmaps]`` and ``bias [fmaps]``, as in the original's trees.
  """

  fmaps: int
  kernel: int
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[int] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``x [B, H, W, Cin]`` -> ``[B, H', W', fmaps]`` with H' = 2H (up), H // 2 (down) or H."""
    if self.up and self.down:
      raise ValueError("Conv2d: up and down are exclusive.")
    if self.kernel < 1 or self.kernel % 2 != 1:
      raise ValueError(f"Conv2d: kernel must be a positive odd size; got {self.kernel}.")
    w = self.param("weight", self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME", dimension_numbers=_NHWC_HWIO)
    if self.use_bias:
      x = x + self.param("bias", nn.initializers.zeros, (self.fmaps,))[None, None, None, :]
    return x
