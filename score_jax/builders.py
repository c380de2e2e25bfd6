"""The one place where an ml-collections config becomes typed objects (SDE, model, loss, optimizer).

Everything downstream takes explicit arguments; nothing else reads the ConfigDict.
"""

from __future__ import annotations

import ml_collections
import optax

from score_jax import losses, models, nets, sampling, sde_lib
from score_jax.nets import ddpm as nets_ddpm
from score_jax.nets import ncsnv2 as nets_ncsnv2

__all__ = [
    "MODEL_BUILDERS", "build_sde", "build_model", "build_loss_fn", "build_optimizer", "sampler_kwargs", "validate",
]


def build_sde(config: ml_collections.ConfigDict) -> sde_lib.SDE:
  """``training.sde`` with its parameters from ``model`` (the original's field names)."""
  name = str(config.training.sde).lower()
  m = config.model
  if name == "vesde":
    return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
  if name == "vpsde":
    return sde_lib.VPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
  if name == "subvpsde":
    return sde_lib.subVPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
  raise ValueError(f"Unknown training.sde {config.training.sde!r}; expected one of {sorted(sde_lib.SDES)}.")


def _build_score_mlp(config: ml_collections.ConfigDict):
  m = config.model
  # The label a network sees is fixed by the SDE (models.get_score_fn): VE feeds the noise level sigma
  # and the network divides its output by it (as NCSN++); VP / sub-VP feed t * 999 (as DDPM++).
  return models.ScoreMLP(features=tuple(m.features), embedding_size=m.embedding_size,
                         embedding_type=m.embedding_type, fourier_scale=m.fourier_scale,
                         scale_by_sigma=str(config.training.sde).lower() == "vesde")


def _build_ncsnpp(config: ml_collections.ConfigDict):
  """NCSN++ / DDPM++ from ``model.*``, ``data.centered/image_size/num_channels`` and ``training.continuous``."""
  m, d = config.model, config.data
  n_levels = len(m.ch_mult)
  if d.image_size % 2 ** (n_levels - 1):
    raise ValueError(f"data.image_size {d.image_size} must be divisible by 2 ** (len(model.ch_mult) - 1) = "
                     f"{2 ** (n_levels - 1)} (model.ch_mult={tuple(m.ch_mult)}).")
  if d.num_channels < 1:
    raise ValueError(f"data.num_channels must be >= 1; got {d.num_channels}.")
  lower = lambda s: str(s).lower()  # the original compares these names case-insensitively
  # Only the Fourier embedding reads model.fourier_scale; the positional configs do not define it.
  if lower(m.embedding_type) == "fourier" and "fourier_scale" not in m:
    raise ValueError("model.fourier_scale is missing; it is required for model.embedding_type='fourier'.")
  fourier_scale = m.fourier_scale if "fourier_scale" in m else nets.NCSNpp.fourier_scale
  return nets.NCSNpp(
      nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
      attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, resamp_with_conv=m.resamp_with_conv,
      conditional=m.conditional, fir=m.fir, fir_kernel=tuple(m.fir_kernel), skip_rescale=m.skip_rescale,
      resblock_type=lower(m.resblock_type), progressive=lower(m.progressive),
      progressive_input=lower(m.progressive_input), progressive_combine=lower(m.progressive_combine),
      attention_type=lower(m.attention_type), init_scale=m.init_scale, fourier_scale=fourier_scale,
      embedding_type=lower(m.embedding_type), scale_by_sigma=m.scale_by_sigma, nonlinearity=lower(m.nonlinearity),
      centered=d.centered, continuous=config.training.continuous, sigma_min=m.sigma_min, sigma_max=m.sigma_max,
      num_scales=m.num_scales, conv_size=m.conv_size)


def _check_image_data(config: ml_collections.ConfigDict) -> None:
  d = config.data
  if d.image_size < 1 or d.num_channels < 1:
    raise ValueError(f"data.image_size and data.num_channels must be >= 1; got image_size={d.image_size!r}, "
                     f"num_channels={d.num_channels!r}.")


def _build_ddpm(config: ml_collections.ConfigDict):
  """DDPM U-Net from ``model.*`` and ``data.centered``, validated against ``data.image_size``."""
  m, d = config.model, config.data
  _check_image_data(config)
  net = nets_ddpm.DDPM(
      nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
      dropout=m.dropout, resamp_with_conv=m.resamp_with_conv, conditional=m.conditional,
      normalization=m.normalization, nonlinearity=str(m.nonlinearity).lower(), centered=d.centered,
      scale_by_sigma=m.scale_by_sigma, sigma_min=m.sigma_min, sigma_max=m.sigma_max, num_scales=m.num_scales)
  nets_ddpm.check_ddpm(net, d.image_size)
  return net


# model.name -> NCSNv2 variant. The original picks the variant by name (its get_network maps image sizes
# below 96, 96-128 and 129-256 px to these three).
_NCSNV2_VARIANTS = {"ncsnv2_64": nets_ncsnv2.NCSNv2, "ncsnv2_128": nets_ncsnv2.NCSNv2_128,
                    "ncsnv2_256": nets_ncsnv2.NCSNv2_256}


def _build_ncsn_family(config: ml_collections.ConfigDict, net_cls):
  m, d = config.model, config.data
  _check_image_data(config)
  net = net_cls(nf=m.nf, normalization=m.normalization, nonlinearity=str(m.nonlinearity).lower(),
                interpolation=m.interpolation, centered=d.centered, scale_by_sigma=m.scale_by_sigma,
                sigma_min=m.sigma_min, sigma_max=m.sigma_max, num_scales=m.num_scales)
  nets_ncsnv2.check_ncsn(net, d.image_size)
  return net


def _build_ncsnv2(config: ml_collections.ConfigDict):
  """NCSNv2 (``model.name`` ncsnv2_64 / ncsnv2_128 / ncsnv2_256) from ``model.*`` and ``data.*``."""
  name = config.model.name
  if name not in _NCSNV2_VARIANTS:
    raise ValueError(f"Unknown NCSNv2 model.name {name!r}; expected one of {sorted(_NCSNV2_VARIANTS)}.")
  return _build_ncsn_family(config, _NCSNV2_VARIANTS[name])


def _build_ncsn(config: ml_collections.ConfigDict):
  """NCSN v1 from ``model.*`` and ``data.*``.

  The original's configs do not set ``model.num_classes``, which its conditional InstanceNorm++ reads; the
  labels index the ``model.num_scales`` noise levels, so that is the number of classes. An explicit
  ``model.num_classes`` must agree with it.
  """
  m = config.model
  if "num_classes" in m and m.num_classes != m.num_scales:
    raise ValueError(f"model.num_classes={m.num_classes!r} must equal model.num_scales={m.num_scales!r}: NCSN "
                     "conditions on the index of the noise level.")
  return _build_ncsn_family(config, nets_ncsnv2.NCSN)


# model.name -> function(config) -> flax Module. One entry per network family; each builder reads the
# config fields its network needs and passes them as typed arguments.
MODEL_BUILDERS = {
    "score_mlp": _build_score_mlp,
    "ddpm": _build_ddpm,
    "ncsnv2_64": _build_ncsnv2,
    "ncsnv2_128": _build_ncsnv2,
    "ncsnv2_256": _build_ncsnv2,
    "ncsn": _build_ncsn,
    "ncsnpp": _build_ncsnpp,
}


def build_model(config: ml_collections.ConfigDict):
  """The score network named by ``model.name``, built from typed arguments."""
  name = config.model.name
  if name not in MODEL_BUILDERS:
    raise ValueError(f"Unknown model.name {name!r}; expected one of {sorted(MODEL_BUILDERS)}.")
  return MODEL_BUILDERS[name](config)


def build_loss_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE):
  """``loss_fn(key, score_fn, x)`` for ``training.loss`` (``dsm``, ``ism``, ``ssm``, ``ssm_vr``)."""
  t = config.training
  if t.loss not in ("dsm", "ism", "ssm", "ssm_vr"):
    raise ValueError(f"Unknown training.loss {t.loss!r}; expected one of ['dsm', 'ism', 'ssm', 'ssm_vr'] "
                     "('smld'/'ddpm' need a discrete-time network).")
  return losses.make_loss_fn(t.loss, sde, reduce_mean=t.reduce_mean, likelihood_weighting=t.likelihood_weighting,
                             eps=t.eps, n_projections=t.n_projections)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with linear warmup and global-norm gradient clipping, as the original's ``optimization_manager``.

  The learning rate of update ``k`` (counted from 0) is ``lr * min(k / warmup, 1)``; gradients are scaled
  by ``grad_clip / max(|g|, grad_clip)`` (``grad_clip <= 0`` disables clipping). A nonzero
  ``optim.weight_decay`` is decoupled and scaled by the learning rate, as flax's old ``optim.Adam``
  (``optax.adamw``).
  """
  o = config.optim
  if o.optimizer != "Adam":
    raise ValueError(f"Unknown optim.optimizer {o.optimizer!r}; expected 'Adam'.")
  schedule = optax.linear_schedule(0.0, o.lr, o.warmup) if o.warmup > 0 else o.lr
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  weight_decay = o.get("weight_decay", 0.0)
  if weight_decay:
    parts.append(optax.adamw(schedule, b1=o.beta1, eps=o.eps, weight_decay=weight_decay))
  else:
    parts.append(optax.adam(schedule, b1=o.beta1, eps=o.eps))
  return optax.chain(*parts)


def sampler_kwargs(config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of :func:`score_jax.sampling.pc_sample` from ``sampling.*``."""
  s = config.sampling
  sampling.get_predictor(s.predictor)  # validate names before any work
  sampling.get_corrector(s.corrector)
  return dict(predictor=s.predictor, corrector=s.corrector, snr=s.snr, n_steps=s.n_steps_each,
              probability_flow=s.probability_flow, denoise=s.noise_removal, eps=s.eps,
              snr_reduction=s.snr_reduction)


def validate(config: ml_collections.ConfigDict) -> None:
  """Build every part of ``config`` once, so a bad field fails before training or sampling starts."""
  sde = build_sde(config)
  build_model(config)
  build_loss_fn(config, sde)
  build_optimizer(config)
  sampler_kwargs(config)
