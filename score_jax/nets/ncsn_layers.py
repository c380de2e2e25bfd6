"""Building blocks of NCSN (v1) and NCSNv2: the dilated ResNet encoder and the RefineNet decoder (NHWC).

RefineNet (Lin et al. 2017) as used by NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020): each
``RefineBlock`` refines its inputs with residual conv units (RCU), fuses them at the output resolution
(multi-resolution fusion, MSF), pools context with chained residual pooling (CRP) and refines once more.
The ``Cond*`` blocks are the NCSN v1 versions, which put a noise-conditional normalisation (conditional
InstanceNorm++ indexed by the noise level ``y``) in front of every convolution.

Each block's maths is written once, as a private function that takes the normalisation as a callable
``norm(h) -> h`` (``None``: no normalisation); the module classes only bind it. Class names are part of
the parameter paths and match the original JAX code.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Act = Callable[[Array], Array]
NormFactory = Callable[[], nn.Module]
NormFn = Optional[Callable[[Array], Array]]

__all__ = [
    "ncsn_conv1x1", "ncsn_conv3x3", "ConvMeanPool", "ResidualBlock", "ConditionalResidualBlock",
    "RCUBlock", "CondRCUBlock", "CRPBlock", "CondCRPBlock", "MSFBlock", "CondMSFBlock", "RefineBlock",
    "CondRefineBlock", "INTERPOLATIONS", "check_interpolation",
]

# PyTorch's default Conv2d init (kaiming_uniform with a = sqrt(5)) is U(-b, b) with b = 1 / sqrt(fan_in),
# i.e. variance_scaling with scale 1/3; NCSN and NCSNv2 were trained with it.
TORCH_CONV_SCALE = 1.0 / 3.0
# init_scale = 0 stands for "as good as zero" (a zero kernel would have no gradient signal in its scale).
TINY_INIT_SCALE = 1e-10
# Window of the stride-1 max / average pooling in the chained residual pooling.
CRP_POOL_WINDOW = 5
# Stages in RCU (convs per residual unit) and CRP (pool-conv steps), and RCU units per RefineBlock input.
RCU_STAGES = 2
CRP_STAGES = 2
RCU_INPUT_BLOCKS = 2
RCU_OUTPUT_BLOCKS = 1
RCU_OUTPUT_BLOCKS_END = 3
# model.interpolation values -> jax.image.resize methods.
INTERPOLATIONS = {"bilinear": "bilinear", "nearest_neighbor": "nearest"}


def check_interpolation(interpolation: str) -> None:
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"Unknown interpolation {interpolation!r}; expected one of {sorted(INTERPOLATIONS)}.")


def _torch_conv(x: Array, out_planes: int, kernel: int, bias: bool, dilation: int, init_scale: float) -> Array:
  """Stride-1 SAME convolution with PyTorch's default init (kernel and bias ``U(-b, b)``, ``b = 1/sqrt(fan_in)``)."""
  scale = TINY_INIT_SCALE if init_scale == 0 else init_scale
  fan_in = kernel * kernel * x.shape[-1]
  bound = math.sqrt(3.0 * TORCH_CONV_SCALE * scale / fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Conv(out_planes, kernel_size=(kernel, kernel), padding="SAME", use_bias=bias,
                 kernel_dilation=(dilation, dilation),
                 kernel_init=nn.initializers.variance_scaling(TORCH_CONV_SCALE * scale, "fan_in", "uniform"),
                 bias_init=bias_init)(x)


def ncsn_conv1x1(x: Array, out_planes: int, bias: bool = True, dilation: int = 1, init_scale: float = 1.0) -> Array:
  """1x1 conv ``[B, H, W, C] -> [B, H, W, out_planes]`` with PyTorch init (call inside a compact module)."""
  return _torch_conv(x, out_planes, 1, bias, dilation, init_scale)


def ncsn_conv3x3(x: Array, out_planes: int, bias: bool = True, dilation: int = 1, init_scale: float = 1.0) -> Array:
  """3x3 SAME conv ``[B, H, W, C] -> [B, H, W, out_planes]`` with PyTorch init (call inside a compact module)."""
  return _torch_conv(x, out_planes, 3, bias, dilation, init_scale)


def _mean_pool_2x2(x: Array) -> Array:
  """Average over non-overlapping 2x2 windows: ``[B, H, W, C] -> [B, H/2, W/2, C]`` (H, W even)."""
  b, h, w, c = x.shape
  return jnp.mean(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _resize(x: Array, shape: Sequence[int], interpolation: str) -> Array:
  """Resize ``[B, H, W, C]`` to ``[B, *shape, C]``."""
  return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), INTERPOLATIONS[interpolation])


class ConvMeanPool(nn.Module):
  """Convolution (flax default init) then 2x2 mean pooling: ``[B, H, W, C] -> [B, H/2, W/2, output_dim]``."""

  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Conv(self.output_dim, kernel_size=(self.kernel_size, self.kernel_size), padding="SAME",
                use_bias=self.biases)(x)
    return _mean_pool_2x2(h)


def _residual(x: Array, norm: Callable[[Array], Array], act: Act, output_dim: int, resample: Optional[str],
              dilation: int) -> Array:
  """Pre-activation residual block of the NCSN encoder: ``[B, H, W, C] -> [B, H', W', output_dim]``.

  ``resample='down'`` halves H, W with mean pooling when ``dilation == 1``; with ``dilation > 1`` it only
  changes the width and enlarges the receptive field instead (as the original: the deeper levels of
  NCSN/NCSNv2 keep their resolution and use dilated convolutions).
  """
  if resample not in (None, "down"):
    raise ValueError(f"Unknown resample {resample!r}; expected None or 'down'.")
  h = act(norm(x))
  if resample == "down":
    h = ncsn_conv3x3(h, h.shape[-1], dilation=dilation)
    h = act(norm(h))
    if dilation > 1:
      h = ncsn_conv3x3(h, output_dim, dilation=dilation)
      shortcut = ncsn_conv3x3(x, output_dim, dilation=dilation)
    else:
      h = ConvMeanPool(output_dim=output_dim)(h)
      shortcut = ConvMeanPool(output_dim=output_dim, kernel_size=1)(x)
    return h + shortcut
  # The shortcut conv is created first so that the parameter names follow the original's order.
  if output_dim == x.shape[-1]:
    shortcut = x
  elif dilation > 1:
    shortcut = ncsn_conv3x3(x, output_dim, dilation=dilation)
  else:
    shortcut = ncsn_conv1x1(x, output_dim)
  h = ncsn_conv3x3(h, output_dim, dilation=dilation)
  h = act(norm(h))
  h = ncsn_conv3x3(h, output_dim, dilation=dilation)
  return h + shortcut


class ResidualBlock(nn.Module):
  """NCSNv2 encoder block ``x [B, H, W, C] -> [B, H', W', output_dim]`` (see :func:`_residual`)."""

  output_dim: int
  normalization: NormFactory
  resample: Optional[str] = None
  act: Act = nn.elu
  dilation: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _residual(x, lambda h: self.normalization()(h), self.act, self.output_dim, self.resample, self.dilation)


class ConditionalResidualBlock(nn.Module):
  """NCSN v1 encoder block ``(x [B, H, W, C], y int [B]) -> [B, H', W', output_dim]``, conditional norms."""

  output_dim: int
  normalization: NormFactory
  resample: Optional[str] = None
  act: Act = nn.elu
  dilation: int = 1

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    return _residual(x, lambda h: self.normalization()(h, y), self.act, self.output_dim, self.resample,
                     self.dilation)


def _rcu(x: Array, norm: NormFn, act: Act, features: int, n_blocks: int, n_stages: int) -> Array:
  """Residual conv units: ``n_blocks`` times ``x + (norm -> act -> conv3x3) ^ n_stages (x)``; ``[B, H, W, C]``."""
  for _ in range(n_blocks):
    residual = x
    for _ in range(n_stages):
      if norm is not None:
        x = norm(x)
      x = ncsn_conv3x3(act(x), features, bias=False)
    x = x + residual
  return x


class RCUBlock(nn.Module):
  """Residual conv unit of RefineNet, ``[B, H, W, features] -> [B, H, W, features]``."""

  features: int
  n_blocks: int
  n_stages: int
  act: Act = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _rcu(x, None, self.act, self.features, self.n_blocks, self.n_stages)


class CondRCUBlock(nn.Module):
  """Noise-conditional residual conv unit (NCSN v1): ``(x [B, H, W, features], y [B]) -> x``'s shape."""

  features: int
  n_blocks: int
  n_stages: int
  normalizer: NormFactory
  act: Act = nn.relu

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    return _rcu(x, lambda h: self.normalizer()(h, y), self.act, self.features, self.n_blocks, self.n_stages)


def _crp(x: Array, norm: NormFn, pool: Callable[[Array], Array], act: Act, features: int, n_stages: int) -> Array:
  """Chained residual pooling: ``x = act(x)``, then ``n_stages`` times ``path = conv(pool(norm(path)))``,
  ``x = x + path``. ``[B, H, W, features]`` -> same."""
  x = act(x)
  path = x
  for _ in range(n_stages):
    if norm is not None:
      path = norm(path)
    path = ncsn_conv3x3(pool(path), features, bias=False)
    x = path + x
  return x


def _max_pool(x: Array) -> Array:
  return nn.max_pool(x, (CRP_POOL_WINDOW, CRP_POOL_WINDOW), strides=(1, 1), padding="SAME")


def _avg_pool(x: Array) -> Array:
  # Zero padding counts in the average (count_include_pad), as PyTorch's AvgPool2d in NCSN v1.
  return nn.avg_pool(x, (CRP_POOL_WINDOW, CRP_POOL_WINDOW), strides=(1, 1), padding="SAME")


class CRPBlock(nn.Module):
  """Chained residual pooling with 5x5 max pooling (NCSNv2): ``[B, H, W, features]`` -> same."""

  features: int
  n_stages: int
  act: Act = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _crp(x, None, _max_pool, self.act, self.features, self.n_stages)


class CondCRPBlock(nn.Module):
  """Chained residual pooling with conditional norms and 5x5 average pooling (NCSN v1)."""

  features: int
  n_stages: int
  normalizer: NormFactory
  act: Act = nn.relu

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    return _crp(x, lambda h: self.normalizer()(h, y), _avg_pool, self.act, self.features, self.n_stages)


def _msf(xs: Sequence[Array], norm: NormFn, shape: Sequence[int], features: int, interpolation: str) -> Array:
  """Multi-resolution fusion: ``sum_i resize(conv3x3(norm(xs[i])), shape)`` -> ``[B, *shape, features]``."""
  total = jnp.zeros((xs[0].shape[0], *shape, features), xs[0].dtype)
  for x in xs:
    h = norm(x) if norm is not None else x
    total = total + _resize(ncsn_conv3x3(h, features), shape, interpolation)
  return total


class MSFBlock(nn.Module):
  """Multi-resolution fusion (NCSNv2): list of ``[B, H_i, W_i, C_i]`` -> ``[B, *shape, features]``."""

  shape: Sequence[int]
  features: int
  interpolation: str = "bilinear"

  @nn.compact
  def __call__(self, xs: Sequence[Array]) -> Array:
    return _msf(xs, None, self.shape, self.features, self.interpolation)


class CondMSFBlock(nn.Module):
  """Multi-resolution fusion with conditional norms before each conv (NCSN v1)."""

  shape: Sequence[int]
  features: int
  normalizer: NormFactory
  interpolation: str = "bilinear"

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Array) -> Array:
    return _msf(xs, lambda h: self.normalizer()(h, y), self.shape, self.features, self.interpolation)


class RefineBlock(nn.Module):
  """RefineNet block (NCSNv2): RCU each input, fuse them at ``output_shape`` (MSF), CRP, output RCU.

  ``xs``: list of ``[B, H_i, W_i, C_i]`` (one input with ``start=True``, whose channels must then equal
  ``features``). Returns ``[B, *output_shape, features]``. ``end=True`` uses three output RCU units.
  """

  output_shape: Sequence[int]
  features: int
  act: Act = nn.relu
  interpolation: str = "bilinear"
  start: bool = False
  end: bool = False

  @nn.compact
  def __call__(self, xs: Sequence[Array]) -> Array:
    hs = [RCUBlock(x.shape[-1], RCU_INPUT_BLOCKS, RCU_STAGES, act=self.act)(x) for x in xs]
    h = hs[0] if self.start else MSFBlock(self.output_shape, self.features, self.interpolation)(hs)
    h = CRPBlock(self.features, CRP_STAGES, act=self.act)(h)
    n_out = RCU_OUTPUT_BLOCKS_END if self.end else RCU_OUTPUT_BLOCKS
    return RCUBlock(self.features, n_out, RCU_STAGES, act=self.act)(h)


class CondRefineBlock(nn.Module):
  """Noise-conditional RefineNet block (NCSN v1): as :class:`RefineBlock`, every stage normalised by
  ``normalizer()(h, y)``. ``xs``: list of ``[B, H_i, W_i, C_i]``, ``y`` int ``[B]`` ->
  ``[B, *output_shape, features]``."""

  output_shape: Sequence[int]
  features: int
  normalizer: NormFactory
  act: Act = nn.relu
  interpolation: str = "bilinear"
  start: bool = False
  end: bool = False

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Array) -> Array:
    hs = [CondRCUBlock(x.shape[-1], RCU_INPUT_BLOCKS, RCU_STAGES, self.normalizer, act=self.act)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = CondMSFBlock(self.output_shape, self.features, self.normalizer, self.interpolation)(hs, y)
    h = CondCRPBlock(self.features, CRP_STAGES, self.normalizer, act=self.act)(h, y)
    n_out = RCU_OUTPUT_BLOCKS_END if self.end else RCU_OUTPUT_BLOCKS
    return CondRCUBlock(self.features, n_out, RCU_STAGES, self.normalizer, act=self.act)(h, y)
