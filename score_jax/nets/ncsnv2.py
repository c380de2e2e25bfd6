"""NCSNv2 (Song & Ermon 2020) and NCSN v1 (Song & Ermon 2019): dilated ResNet encoder + RefineNet decoder.

All networks map ``(x [B, H, W, C], labels int [B]) -> [B, H, W, C]``; ``labels`` are indices into the
geometric noise levels ``sigmas`` (0 = ``sigma_max``). NCSNv2 is unconditional and gets its noise
dependence only from dividing the output by ``sigma`` (``scale_by_sigma``, NCSNv2 technique 3); NCSN v1
conditions every normalisation on the noise level (conditional InstanceNorm++).

The variants differ only in their level plan (:data:`NCSNV2_64_PLAN`, ...). Each encoder level is two
residual blocks, the first of which may resample; ``resample='down'`` halves the resolution only at
dilation 1, the dilated levels keep it (as the original). The decoder runs RefineBlocks from the deepest
level up, each fusing the level's encoder output with the previous RefineBlock's output.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from score_jax.nets.layers import get_act
from score_jax.nets.ncsn_layers import (
  ConditionalResidualBlock,
  CondRefineBlock,
  RefineBlock,
  ResidualBlock,
  check_interpolation,
  ncsn_conv3x3,
)
from score_jax.nets.noise_levels import check_integer_labels, check_sigmas, divide_by_sigma, get_sigmas
from score_jax.nets.normalization import NORMALIZATIONS, check_group_norm_channels, get_normalization
from score_jax.nets.remat import check_remat, remat_block

Array = jax.Array

__all__ = ["NCSNv2", "NCSNv2_128", "NCSNv2_256", "NCSN", "Level", "NCSNV2_64_PLAN", "NCSNV2_128_PLAN",
           "NCSNV2_256_PLAN", "resolution_factor", "check_ncsn"]


class Level(NamedTuple):
  """One encoder level and its RefineBlock.

  Attributes:
    width: encoder channels, in multiples of ``nf``.
    down: whether the level's first block has ``resample='down'``.
    dilation: dilation of the level's convolutions (> 1: the level keeps its input resolution).
    refine_width: channels of the level's RefineBlock, in multiples of ``nf``.
  """

  width: int
  down: bool
  dilation: int
  refine_width: int


# Levels from the input resolution to the deepest one.
NCSNV2_64_PLAN = (Level(1, False, 1, 1), Level(2, True, 1, 2), Level(2, True, 2, 2), Level(2, True, 4, 2))
NCSNV2_128_PLAN = (Level(1, False, 1, 1), Level(2, True, 1, 1), Level(2, True, 1, 2), Level(4, True, 2, 2),
                   Level(4, True, 4, 4))
NCSNV2_256_PLAN = (Level(1, False, 1, 1), Level(2, True, 1, 1), Level(2, True, 1, 2), Level(2, True, 1, 2),
                   Level(4, True, 2, 2), Level(4, True, 4, 4))


def resolution_factor(plan) -> int:
  """How many times the plan halves the resolution: H and W must be divisible by this."""
  return 2 ** sum(1 for level in plan if level.down and level.dilation == 1)


def check_ncsn(model: "NCSNv2", image_size: int) -> None:
  """Raise a ValueError naming the bad value if ``model`` cannot run on ``image_size`` px images."""
  name = type(model).__name__
  factor = resolution_factor(model.plan)
  if image_size < factor or image_size % factor:
    raise ValueError(f"{name}: image size {image_size} must be a positive multiple of {factor} (the network "
                     f"halves the resolution {int(np.log2(factor))} times).")
  if model.nf < 1:
    raise ValueError(f"{name}: nf must be a positive number of channels, got {model.nf!r}.")
  if model.conditional:
    if model.normalization != "InstanceNorm++":
      raise ValueError(f"{name}: unknown normalization {model.normalization!r}; NCSN v1 expects "
                       "'InstanceNorm++' (conditional InstanceNorm++).")
  elif model.normalization not in NORMALIZATIONS:
    raise ValueError(f"{name}: unknown normalization {model.normalization!r}; expected one of "
                     f"{list(NORMALIZATIONS)}.")
  check_group_norm_channels(model.normalization, [model.nf] + [level.width * model.nf for level in model.plan], name)
  get_act(model.nonlinearity)
  check_interpolation(model.interpolation)
  check_remat(model.remat)
  check_sigmas(model.sigma_min, model.sigma_max, model.num_scales, name)


class NCSNv2(nn.Module):
  """NCSNv2 for images up to 64 px (CIFAR-10, CelebA): ``(x [B, H, W, C], labels int [B]) -> [B, H, W, C]``.

  Attributes:
    nf: base number of channels.
    normalization: ``'InstanceNorm++'`` (the paper's), ``'InstanceNorm'``, ``'VarianceNorm'`` or ``'GroupNorm'``.
    nonlinearity: ``'elu'`` (the paper's), ``'relu'``, ``'lrelu'`` or ``'swish'``.
    interpolation: upsampling in the RefineBlocks, ``'bilinear'`` or ``'nearest_neighbor'``.
    centered: whether the data are already in ``[-1, 1]``; otherwise ``x`` in ``[0, 1]`` is mapped there.
    scale_by_sigma: divide the output by ``sigmas[labels]`` (the network then models the score).
    sigma_min, sigma_max, num_scales: the noise levels ``sigmas`` the labels index (:func:`get_sigmas`).
    remat: rematerialisation of the residual and RefineNet blocks, one of
      :data:`score_jax.nets.remat.REMAT_POLICIES` (``model.remat``; same variables and outputs).
  """

  nf: int = 128
  normalization: str = "InstanceNorm++"
  nonlinearity: str = "elu"
  interpolation: str = "bilinear"
  centered: bool = False
  scale_by_sigma: bool = True
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 232
  remat: str = "none"

  plan: ClassVar[tuple[Level, ...]] = NCSNV2_64_PLAN
  conditional: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
    name = type(self).__name__
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise ValueError(f"{name}: expected square NHWC images [B, H, H, C], got shape {x.shape}.")
    check_ncsn(self, x.shape[1])
    if self.conditional or self.scale_by_sigma:
      check_integer_labels(labels, name)
    act = get_act(self.nonlinearity)
    if self.conditional:
      norm_factory = get_normalization(self.normalization, conditional=True, num_classes=self.num_scales)
    else:
      norm_factory = get_normalization(self.normalization)

    def norm(h):
      return norm_factory()(h, labels) if self.conditional else norm_factory()(h)

    def residual(width, resample, dilation, h):
      if self.conditional:
        block = remat_block(ConditionalResidualBlock, self.remat)
        return block(width, norm_factory, resample, act, dilation)(h, labels)
      return remat_block(ResidualBlock, self.remat)(width, norm_factory, resample, act, dilation)(h)

    def refine(shape, width, start, end, hs):
      if self.conditional:
        block = remat_block(CondRefineBlock, self.remat)
        return block(shape, width, norm_factory, act, self.interpolation, start, end)(hs, labels)
      return remat_block(RefineBlock, self.remat)(shape, width, act, self.interpolation, start, end)(hs)

    h = x if self.centered else 2.0 * x - 1.0
    h = ncsn_conv3x3(h, self.nf)  # [B, H, W, nf]
    skips = []
    for level in self.plan:
      width = level.width * self.nf
      h = residual(width, "down" if level.down else None, level.dilation, h)
      h = residual(width, None, level.dilation, h)
      skips.append(h)

    h = None
    last = len(self.plan) - 1
    for i, (level, skip) in enumerate(zip(reversed(self.plan), reversed(skips))):
      inputs = [skip] if h is None else [skip, h]
      h = refine(tuple(skip.shape[1:3]), level.refine_width * self.nf, i == 0, i == last, inputs)

    h = ncsn_conv3x3(act(norm(h)), x.shape[-1])  # [B, H, W, C]
    if self.scale_by_sigma:
      h = divide_by_sigma(h, get_sigmas(self.sigma_min, self.sigma_max, self.num_scales), labels)
    return h


class NCSNv2_128(NCSNv2):  # noqa: N801 (the original's name)
  """NCSNv2 for 96-128 px images (LSUN bedroom/church at 128): one more level, 4 ``nf`` deepest channels."""

  plan: ClassVar[tuple[Level, ...]] = NCSNV2_128_PLAN


class NCSNv2_256(NCSNv2):  # noqa: N801 (the original's name)
  """NCSNv2 for 129-256 px images (LSUN tower/church at 256): two more levels than the 64 px network."""

  plan: ClassVar[tuple[Level, ...]] = NCSNV2_256_PLAN


class NCSN(NCSNv2):
  """NCSN v1 (Song & Ermon 2019) as the original JAX port intends it: the NCSNv2 64 px layout with
  noise-conditional blocks (conditional InstanceNorm++ with one embedding row per noise level, average
  pooling in the CRP stages, normalisation before every RCU/MSF conv).

  The original's ``ncsn`` cannot be built (see the fixture ``_summary.json``): its configs never set
  ``model.num_classes``, which its conditional normalisation reads, and its conditional residual block
  calls ``self.normalization(h, y)`` (passing the activations as the module's fields) where every other
  call site creates the module first, ``self.normalization()(h, y)``. Here the number of classes is
  ``num_scales`` (the labels index the noise levels) and the block normalises as the other call sites do.
  There is therefore no reference tree for this network; its convolutions are NCSNv2-64's.

  Defaults are those of ``configs/ve/ncsn/cifar10.py``: 10 levels from 1 to 0.01, no ``scale_by_sigma``.
  """

  sigma_max: float = 1.0
  num_scales: int = 10
  scale_by_sigma: bool = False

  conditional: ClassVar[bool] = True
