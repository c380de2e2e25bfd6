"""The one place where an ml-collections config becomes typed objects (SDE, model, loss, optimizer).

Everything downstream takes explicit arguments; nothing else reads the ConfigDict.
"""

from __future__ import annotations

import ml_collections
import optax

from score_jax import losses, models, sampling, sde_lib

__all__ = ["MODEL_BUILDERS", "build_sde", "build_model", "build_loss_fn", "build_optimizer", "sampler_kwargs", "validate"]


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


# model.name -> function(config) -> flax Module. One entry per network family; each builder reads the
# config fields its network needs and passes them as typed arguments.
MODEL_BUILDERS = {
    "score_mlp": _build_score_mlp,
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
  """Adam with linear warmup and global-norm gradient clipping, as the original's ``optimization_manager``."""
  o = config.optim
  if o.optimizer != "Adam":
    raise ValueError(f"Unknown optim.optimizer {o.optimizer!r}; expected 'Adam'.")
  schedule = optax.linear_schedule(0.0, o.lr, o.warmup) if o.warmup > 0 else o.lr
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
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
