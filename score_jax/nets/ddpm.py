"""DDPM U-Net (Ho et al. 2020, appendix B), as used by Score-SDE for its DDPM / VP baselines.

``(x [B, H, W, C], labels [B]) -> [B, H, W, C]``. A U-Net of ``len(ch_mult)`` resolutions with
``num_res_blocks`` residual blocks each, self-attention at the resolutions in ``attn_resolutions`` and in
the middle, skip connections from every encoder output to the decoder, and a sinusoidal embedding of the
label added inside every residual block (``conditional``). The label is a timestep: DDPM's integer step,
``t * 999`` for continuous VP / sub-VP, or the SMLD noise-level index for VE with ``scale_by_sigma``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.nets import layers
from score_jax.nets.layers import (
  AttnBlock,
  Downsample,
  ResnetBlockDDPM,
  Upsample,
  conv3x3,
  default_init,
  get_act,
  timestep_embedding,
)
from score_jax.nets.noise_levels import check_integer_labels, check_sigmas, divide_by_sigma, get_sigmas
from score_jax.nets.normalization import NORMALIZATIONS, check_group_norm_channels, get_normalization
from score_jax.nets.remat import check_remat, remat_block

Array = jax.Array

__all__ = ["DDPM", "ddpm_norm_channels", "check_ddpm"]

# The label embedding MLP is TEMB_MULT * nf wide.
TEMB_MULT = 4


def ddpm_norm_channels(nf: int, ch_mult: Sequence[int], num_res_blocks: int) -> list[int]:
  """Channel counts of the inputs of every normalisation layer of the U-Net (for the GroupNorm check)."""
  skips = [nf]
  channels = [nf]
  for i, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      channels += [skips[-1], nf * mult]
      skips.append(nf * mult)
    if i != len(ch_mult) - 1:
      skips.append(skips[-1])
  c = skips[-1]
  for mult in reversed(ch_mult):
    for _ in range(num_res_blocks + 1):
      channels += [c + skips.pop(), nf * mult]
      c = nf * mult
  return channels


def check_ddpm(model: "DDPM", image_size: int) -> None:
  """Raise a ValueError naming the bad value if ``model`` cannot run on ``image_size`` px images."""
  ch_mult, nf, num_res_blocks = model.ch_mult, model.nf, model.num_res_blocks
  if not ch_mult or any(int(m) != m or m < 1 for m in ch_mult):
    raise ValueError(f"DDPM: ch_mult must be a non-empty sequence of positive integers, got {ch_mult!r}.")
  if nf < 1 or num_res_blocks < 1:
    raise ValueError(f"DDPM: nf and num_res_blocks must be positive, got nf={nf!r}, "
                     f"num_res_blocks={num_res_blocks!r}.")
  factor = 2 ** (len(ch_mult) - 1)
  if image_size < factor or image_size % factor:
    raise ValueError(f"DDPM: image size {image_size} must be a positive multiple of {factor} "
                     f"(ch_mult={tuple(ch_mult)} halves the resolution {len(ch_mult) - 1} times).")
  if not 0.0 <= model.dropout < 1.0:
    raise ValueError(f"DDPM: dropout must be in [0, 1), got {model.dropout!r}.")
  if model.normalization not in NORMALIZATIONS:
    raise ValueError(f"DDPM: unknown normalization {model.normalization!r}; expected one of "
                     f"{list(NORMALIZATIONS)}.")
  check_group_norm_channels(model.normalization, ddpm_norm_channels(nf, ch_mult, num_res_blocks), "DDPM")
  get_act(model.nonlinearity)
  check_remat(model.remat)
  check_sigmas(model.sigma_min, model.sigma_max, model.num_scales, "DDPM")


class DDPM(nn.Module):
  """DDPM U-Net ``(x [B, H, W, C], labels [B]) -> [B, H, W, C]``; ``train`` switches dropout on.

  Attributes:
    nf: channels at the first resolution.
    ch_mult: channel multiple of ``nf`` per resolution; ``len(ch_mult) - 1`` downsamplings.
    num_res_blocks: residual blocks per resolution in the encoder (the decoder has one more).
    attn_resolutions: spatial sizes (H) after whose residual blocks self-attention is applied.
    dropout: dropout rate inside the residual blocks (needs a ``'dropout'`` rng when ``train``).
    resamp_with_conv: learned (conv) down/upsampling instead of average pooling / plain nearest upsampling.
    conditional: add the sinusoidal label embedding in the residual blocks.
    normalization: ``'GroupNorm'`` (32 groups, the paper's) or another of :data:`NORMALIZATIONS`.
    nonlinearity: ``'swish'`` (the paper's), ``'elu'``, ``'relu'`` or ``'lrelu'``.
    centered: whether the data are already in ``[-1, 1]``; otherwise ``x`` in ``[0, 1]`` is mapped there.
    scale_by_sigma: divide the output by ``sigmas[labels]`` (VE / SMLD training with integer labels).
    sigma_min, sigma_max, num_scales: the noise levels for ``scale_by_sigma``.
    remat: rematerialisation of the residual and attention blocks, one of
      :data:`score_jax.nets.remat.REMAT_POLICIES` (``model.remat``; same variables and outputs).
    label_dim: number of classes K of a class-conditional network (0: none); ``class_labels [B]`` in ``[0, K]``
      (K: the null class of classifier-free guidance) are embedded and added to the label embedding
      (:func:`score_jax.nets.layers.add_class_embedding`).
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  normalization: str = "GroupNorm"
  nonlinearity: str = "swish"
  centered: bool = True
  scale_by_sigma: bool = False
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  remat: str = "none"
  label_dim: int = 0

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False, class_labels: Array | None = None) -> Array:
    layers.check_label_dim(self.label_dim, self.conditional, "DDPM")
    if class_labels is not None and not self.label_dim:
      raise ValueError("DDPM: class_labels given to an unconditional network (label_dim=0); set model.label_dim.")
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise ValueError(f"DDPM: expected square NHWC images [B, H, H, C], got shape {x.shape}.")
    check_ddpm(self, x.shape[1])
    if self.scale_by_sigma:
      check_integer_labels(labels, "DDPM with scale_by_sigma")
    act = get_act(self.nonlinearity)
    normalize = get_normalization(self.normalization)

    resnet_cls = remat_block(ResnetBlockDDPM, self.remat, (3,))  # __call__(x, temb, train): train is static
    attn_cls = remat_block(AttnBlock, self.remat)

    def resnet_block(h, out_ch=None):
      return resnet_cls(act=act, normalize=normalize, out_ch=out_ch, dropout=self.dropout)(h, temb, train)

    def attention(h):
      return attn_cls(normalize=normalize)(h)

    if self.conditional:
      temb = timestep_embedding(labels, self.nf)  # [B, nf]
      if self.label_dim:
        temb = layers.add_class_embedding(temb, class_labels, self.label_dim)
      temb = nn.Dense(TEMB_MULT * self.nf, kernel_init=default_init())(temb)
      temb = nn.Dense(TEMB_MULT * self.nf, kernel_init=default_init())(act(temb))  # [B, 4 nf]
    else:
      temb = None

    h = x if self.centered else 2.0 * x - 1.0
    hs = [conv3x3(h, self.nf)]  # encoder outputs, consumed by the decoder's skip connections
    last_level = len(self.ch_mult) - 1
    for i, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = resnet_block(hs[-1], self.nf * mult)
        if h.shape[1] in self.attn_resolutions:
          h = attention(h)
        hs.append(h)
      if i != last_level:
        hs.append(Downsample(with_conv=self.resamp_with_conv)(hs[-1]))

    h = resnet_block(hs[-1])
    h = attention(h)
    h = resnet_block(h)

    for i in reversed(range(len(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = resnet_block(jnp.concatenate([h, hs.pop()], axis=-1), self.nf * self.ch_mult[i])
      if h.shape[1] in self.attn_resolutions:
        h = attention(h)
      if i != 0:
        h = Upsample(with_conv=self.resamp_with_conv)(h)

    h = act(normalize()(h))
    h = conv3x3(h, x.shape[-1], init_scale=0.0)  # [B, H, W, C]
    if self.scale_by_sigma:
      h = divide_by_sigma(h, get_sigmas(self.sigma_min, self.sigma_max, self.num_scales), labels)
    return h
