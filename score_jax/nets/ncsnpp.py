"""NCSN++ and DDPM++ (Song et al. 2021, section 4.4 and appendix H): one U-Net class, two option sets.

NCSN++ uses BigGAN residual blocks with FIR resampling, an input pyramid and Gaussian Fourier features of
``log sigma``; DDPM++ uses the same class without FIR, without the pyramid and with DDPM's sinusoidal
embedding of ``t * 999``. The "deep" variants only raise ``num_res_blocks``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.nets import layers, layerspp
from score_jax.nets.noise_levels import get_sigmas
from score_jax.nets.remat import check_remat, remat_block

Array = jax.Array

__all__ = [
    "NCSNpp", "RESBLOCK_TYPES", "PROGRESSIVE", "PROGRESSIVE_INPUT", "EMBEDDING_TYPES", "ATTENTION_TYPES",
    "SUPPORTED_CONV_SIZE", "smld_sigmas",
]

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDING_TYPES = ("fourier", "positional")
ATTENTION_TYPES = ("ddpm",)
# The original accepts model.conv_size but always uses 3x3 convolutions.
SUPPORTED_CONV_SIZE = 3


smld_sigmas = get_sigmas  # the SMLD noise levels, geometric from sigma_max (index 0) to sigma_min


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; expected one of {list(choices)}.")


class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ score network ``(x [B, H, W, C], labels [B]) -> [B, H, W, C]``.

  The labels are the noise levels ``sigma`` for ``embedding_type='fourier'`` (continuous VE; the network
  embeds ``log sigma``), else timesteps: ``t * 999`` (continuous VP / sub-VP) or the discrete index of the
  noise level (0 = largest sigma), embedded sinusoidally. With ``scale_by_sigma`` the output is divided by
  sigma (the label itself for Fourier, ``smld_sigmas[label]`` for positional), so that it is a score.

  H and W must be divisible by ``2 ** (len(ch_mult) - 1)``. Call as
  ``model.apply(variables, x, labels, train=train)`` with a 'dropout' rng when ``train`` and ``dropout > 0``.

  Attributes (the original's ``config.model`` fields unless noted):
    nf: base channel count; level ``i`` has ``nf * ch_mult[i]`` channels.
    ch_mult: channel multipliers, one per resolution (each level but the last halves H and W).
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attn_resolutions: spatial sizes (H) that get a self-attention block.
    dropout: dropout rate inside residual blocks.
    resamp_with_conv: learnable convolutions in the DDPM-style Upsample/Downsample.
    conditional: condition on the labels (time / noise-level embedding).
    fir, fir_kernel: FIR resampling and its 1-D kernel.
    skip_rescale: divide residual sums by sqrt(2).
    resblock_type: 'ddpm' or 'biggan' (BigGAN blocks also resample).
    progressive: output pyramid, 'none' | 'output_skip' | 'residual'.
    progressive_input: input pyramid, 'none' | 'input_skip' | 'residual'.
    progressive_combine: how 'input_skip' merges the pyramid, 'sum' | 'cat'.
    attention_type: only 'ddpm'.
    init_scale: initialiser scale of zero-initialised layers (0 -> 1e-10).
    fourier_scale: std of the Gaussian Fourier frequencies.
    embedding_type: 'fourier' (continuous only) or 'positional'.
    scale_by_sigma: divide the output by sigma.
    nonlinearity: 'swish', 'elu', 'relu' or 'lrelu'.
    centered: inputs are in [-1, 1] (``data.centered``); otherwise [0, 1] is mapped to [-1, 1].
    continuous: the labels are continuous (``training.continuous``).
    sigma_min, sigma_max, num_scales: the SMLD noise levels for positional + ``scale_by_sigma``.
    conv_size: must be 3 (as in the original, which ignores it).
    remat: rematerialisation of the residual and attention blocks, one of
      :data:`score_jax.nets.remat.REMAT_POLICIES` (score_jax's ``model.remat``; same variables and outputs).
    label_dim: number of classes K of a class-conditional network (0: none); ``class_labels [B]`` in ``[0, K]``
      (K: the null class of classifier-free guidance) are embedded and added to the noise embedding before its
      MLP, as EDM's ``map_label`` (:func:`score_jax.nets.layers.add_class_embedding`).
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = True
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  attention_type: str = "ddpm"
  init_scale: float = 0.0
  fourier_scale: float = 16.0
  embedding_type: str = "fourier"
  scale_by_sigma: bool = True
  nonlinearity: str = "swish"
  centered: bool = False
  continuous: bool = True
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  conv_size: int = SUPPORTED_CONV_SIZE
  remat: str = "none"
  label_dim: int = 0

  def __post_init__(self):
    self.validate()
    super().__post_init__()

  def validate(self) -> None:
    """Raise a ValueError naming the first bad field (checked on construction)."""
    _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
    _check_choice("progressive", self.progressive, PROGRESSIVE)
    _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
    _check_choice("progressive_combine", self.progressive_combine, layerspp.COMBINE_METHODS)
    _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
    _check_choice("attention_type", self.attention_type, ATTENTION_TYPES)
    layers.get_act(self.nonlinearity)
    check_remat(self.remat)
    layers.check_label_dim(self.label_dim, self.conditional, "NCSNpp")
    if self.embedding_type == "fourier" and not self.continuous:
      raise ValueError("embedding_type 'fourier' needs continuous labels (training.continuous=True); "
                       "use 'positional' for discrete training.")
    if self.conv_size != SUPPORTED_CONV_SIZE:
      raise ValueError(f"conv_size {self.conv_size} is not supported; expected {SUPPORTED_CONV_SIZE}.")
    if len(self.ch_mult) < 1 or self.nf < 1 or self.num_res_blocks < 0:
      raise ValueError(f"Expected nf >= 1, num_res_blocks >= 0 and a non-empty ch_mult; got nf={self.nf}, "
                       f"num_res_blocks={self.num_res_blocks}, ch_mult={tuple(self.ch_mult)}.")
    if self.scale_by_sigma and self.embedding_type == "positional" and self.num_scales < 1:
      raise ValueError(f"num_scales must be >= 1 for scale_by_sigma; got {self.num_scales}.")
    for channels, where in self._group_norm_inputs():
      layers.check_group_norm(channels, f"{where} (nf={self.nf}, ch_mult={tuple(self.ch_mult)})")

  @property
  def downsampling_factor(self) -> int:
    """H and W must be multiples of this."""
    return 2 ** (len(self.ch_mult) - 1)

  def _group_norm_inputs(self) -> list[tuple[int, str]]:
    """(channels, where) of every GroupNorm in the network, following the forward pass's channel counts."""
    out = []
    n_levels = len(self.ch_mult)
    hs = [self.nf]
    for i in range(n_levels):
      width = self.nf * self.ch_mult[i]
      for _ in range(self.num_res_blocks):
        out += [(hs[-1], f"down level {i} block input"), (width, f"down level {i} block")]
        hs.append(width)
      if i != n_levels - 1:
        c = hs[-1]
        if self.resblock_type == "biggan":
          out.append((c, f"down level {i} downsampling block"))
        if self.progressive_input == "input_skip" and self.progressive_combine == "cat":
          c = 2 * c
        hs.append(c)
    h = hs[-1]
    out.append((h, "middle block"))
    for i in reversed(range(n_levels)):
      width = self.nf * self.ch_mult[i]
      for _ in range(self.num_res_blocks + 1):
        out += [(h + hs.pop(), f"up level {i} block input (with skip)"), (width, f"up level {i} block")]
        h = width
    return out

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = False, class_labels: Array | None = None) -> Array:
    """``x [B, H, W, C]``, ``labels [B]`` (sigma, ``t * 999`` or an integer index) -> ``[B, H, W, C]``;
    ``class_labels [B]`` in ``[0, label_dim]`` (``label_dim`` = the null class; None = null for all) when
    ``label_dim > 0``."""
    if class_labels is not None and not self.label_dim:
      raise ValueError("NCSNpp: class_labels given to an unconditional network (label_dim=0); set model.label_dim.")
    if x.ndim != 4 or labels.shape != x.shape[:1]:
      raise ValueError(f"NCSNpp expects x [B, H, W, C] and labels [B]; got {x.shape} and {labels.shape}.")
    if x.shape[1] % self.downsampling_factor or x.shape[2] % self.downsampling_factor:
      raise ValueError(f"NCSNpp: image size {x.shape[1:3]} must be divisible by 2 ** (len(ch_mult) - 1) = "
                       f"{self.downsampling_factor} (ch_mult={tuple(self.ch_mult)}).")
    act = layers.get_act(self.nonlinearity)
    nf, n_levels = self.nf, len(self.ch_mult)
    fir_kernel = tuple(self.fir_kernel)

    if self.embedding_type == "fourier":
      sigma = labels
      temb = layerspp.GaussianFourierProjection(embedding_size=nf, scale=self.fourier_scale)(jnp.log(labels))
    else:
      sigma = None
      if self.scale_by_sigma:
        sigma = smld_sigmas(self.sigma_min, self.sigma_max, self.num_scales)[labels.astype(jnp.int32)]
      temb = layers.timestep_embedding(labels, nf)
    if self.conditional:
      if self.label_dim:
        temb = layers.add_class_embedding(temb, class_labels, self.label_dim)
      temb = nn.Dense(4 * nf, kernel_init=layers.default_init())(temb)
      temb = nn.Dense(4 * nf, kernel_init=layers.default_init())(act(temb))
    else:
      temb = None

    attn_cls = remat_block(layerspp.AttnBlockpp, self.remat)
    attn_block = functools.partial(attn_cls, init_scale=self.init_scale, skip_rescale=self.skip_rescale)
    upsample = functools.partial(layerspp.Upsample, with_conv=self.resamp_with_conv, fir=self.fir,
                                 fir_kernel=fir_kernel)
    downsample = functools.partial(layerspp.Downsample, with_conv=self.resamp_with_conv, fir=self.fir,
                                   fir_kernel=fir_kernel)
    # The pyramids resample with a learnable conv only in 'residual' mode (which changes channels).
    pyramid_upsample = functools.partial(layerspp.Upsample, fir=self.fir, fir_kernel=fir_kernel,
                                         with_conv=self.progressive == "residual")
    pyramid_downsample = functools.partial(layerspp.Downsample, fir=self.fir, fir_kernel=fir_kernel,
                                           with_conv=self.progressive_input == "residual")
    # The blocks are called as block(x, temb, train); train (position 3, counting self) is a Python bool.
    if self.resblock_type == "ddpm":
      resnet_cls = remat_block(layerspp.ResnetBlockDDPMpp, self.remat, (3,))
      resnet_block = functools.partial(resnet_cls, act=act, dropout=self.dropout, init_scale=self.init_scale,
                                       skip_rescale=self.skip_rescale)
    else:
      resnet_cls = remat_block(layerspp.ResnetBlockBigGANpp, self.remat, (3,))
      resnet_block = functools.partial(resnet_cls, act=act, dropout=self.dropout, fir=self.fir,
                                       fir_kernel=fir_kernel, init_scale=self.init_scale,
                                       skip_rescale=self.skip_rescale)

    if not self.centered:
      x = 2 * x - 1.0  # [0, 1] -> [-1, 1]

    # Down path; hs keeps every skip activation for the up path.
    input_pyramid = x
    hs = [layers.conv3x3(x, nf)]
    for i_level in range(n_levels):
      for _ in range(self.num_res_blocks):
        h = resnet_block(out_ch=nf * self.ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block()(h)
        hs.append(h)
      if i_level != n_levels - 1:
        if self.resblock_type == "ddpm":
          h = downsample()(hs[-1])
        else:
          h = resnet_block(down=True)(hs[-1], temb, train)
        if self.progressive_input == "input_skip":
          input_pyramid = pyramid_downsample()(input_pyramid)
          h = layerspp.Combine(method=self.progressive_combine)(input_pyramid, h)
        elif self.progressive_input == "residual":
          input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
          input_pyramid = layerspp.merge_residual(input_pyramid, h, self.skip_rescale)
          h = input_pyramid
        hs.append(h)

    h = hs[-1]
    h = resnet_block()(h, temb, train)
    h = attn_block()(h)
    h = resnet_block()(h, temb, train)

    # Up path, with an optional output pyramid at the image's channel count ('output_skip') or at the
    # features' ('residual').
    pyramid = None
    for i_level in reversed(range(n_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = resnet_block(out_ch=nf * self.ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn_block()(h)

      if self.progressive == "output_skip":
        if pyramid is not None:
          pyramid = pyramid_upsample()(pyramid)
        out = layers.conv3x3(act(layerspp.group_norm(h)), x.shape[-1], init_scale=self.init_scale)
        pyramid = out if pyramid is None else pyramid + out
      elif self.progressive == "residual":
        if pyramid is None:
          pyramid = layers.conv3x3(act(layerspp.group_norm(h)), h.shape[-1])
        else:
          pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
          pyramid = layerspp.merge_residual(pyramid, h, self.skip_rescale)
          h = pyramid

      if i_level != 0:
        if self.resblock_type == "ddpm":
          h = upsample()(h)
        else:
          h = resnet_block(up=True)(h, temb, train)

    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = layers.conv3x3(act(layerspp.group_norm(h)), x.shape[-1], init_scale=self.init_scale)

    if self.scale_by_sigma:
      h = h / sigma[:, None, None, None]
    return h
