"""Where an ml-collections config becomes typed objects: the SDE, network, loss, optimizer and sampler.

The maths below (SDEs, losses, samplers, networks) takes explicit typed arguments and never sees a ConfigDict.
The training blocks that run a whole experiment read their own sections of it: :mod:`score_jax.train` (the
``training`` objective and ``model.ema_rate``), :mod:`score_jax.parallel` (``training.n_jitted_steps``),
:mod:`score_jax.checkpoints` (the save frequencies and the sections that fix a checkpoint's tree) and
:mod:`score_jax.datasets` (``data``); the pipeline (:mod:`score_jax.pipeline`) passes the config to them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from score_jax import conditional, edm, edm_net, fast_sampling, losses, models, nets, sampling, sde_lib, validation
from score_jax.nets import ddpm as nets_ddpm
from score_jax.nets import ncsnv2 as nets_ncsnv2
from score_jax.nets import remat as nets_remat
from score_jax.nets import wideresnet as nets_wideresnet

__all__ = [
    "MODEL_BUILDERS", "build_sde", "build_model", "build_loss_fn", "build_optimizer", "sampler_kwargs", "validate",
    "SAMPLING_METHODS", "EDM_METHODS", "EDM_SAMPLING_DEFAULTS", "sampler_settings", "build_sampler",
    "CLASSIFIER_BUILDERS", "is_classifier", "build_classifier", "EDM_NETWORKS", "edm_settings",
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


def _remat(config: ml_collections.ConfigDict) -> str:
  """``model.remat`` ('none' where a config has none), checked (:data:`score_jax.nets.remat.REMAT_POLICIES`)."""
  remat = config.model.get("remat", "none")
  nets_remat.check_remat(remat)
  return remat


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
      num_scales=m.num_scales, conv_size=m.conv_size, remat=_remat(config),
      label_dim=conditional.label_dim(config))


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
      scale_by_sigma=m.scale_by_sigma, sigma_min=m.sigma_min, sigma_max=m.sigma_max, num_scales=m.num_scales,
      remat=_remat(config), label_dim=conditional.label_dim(config))
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
                sigma_min=m.sigma_min, sigma_max=m.sigma_max, num_scales=m.num_scales, remat=_remat(config))
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
  """The score network named by ``model.name``, built from typed arguments; inside EDM's preconditioning when
  ``training.loss`` is an EDM loss (:func:`edm_settings`)."""
  name = config.model.name
  if name not in MODEL_BUILDERS:
    raise ValueError(f"Unknown model.name {name!r}; expected one of {sorted(MODEL_BUILDERS)}.")
  net = MODEL_BUILDERS[name](config)
  settings = edm_settings(config)
  if settings is None:
    return net
  return edm_net.EDMPrecond(inner=net, kind=settings["kind"], precond_params=tuple(sorted(settings["precond"].items())),
                            label_mode="fourier" if str(config.model.embedding_type).lower() == "fourier"
                            else "positional")


# Networks that can sit inside EDM's preconditioning: they take any float label.
EDM_NETWORKS = ("ncsnpp", "ddpm")


def edm_settings(config: ml_collections.ConfigDict) -> dict | None:
  """``{kind, precond, loss}`` of an EDM ``training.loss`` (``edm``, ``edm_vp``, ``edm_ve``) from the ``edm``
  section (EDM's names: sigma_data, P_mean, P_std, beta_d, beta_min, M, epsilon_t, sigma_min, sigma_max), or None.

  EDM-trained models are denoisers in the noise level sigma, i.e. score models of a VE SDE: they need
  ``training.sde='vesde'`` (whose ``model.sigma_min`` / ``sigma_max`` is the sampling range), continuous
  training, a network of :data:`EDM_NETWORKS` without ``scale_by_sigma``, and centered data.
  """
  loss = str(config.training.get("loss", ""))
  if loss not in edm.TRAINING_LOSSES:
    return None
  t, m = config.training, config.model
  if str(t.sde).lower() != "vesde" or not t.get("continuous", True):
    raise ValueError(f"training.loss={loss!r} trains a denoiser in sigma: it needs training.sde='vesde' and "
                     f"training.continuous=True (got {t.sde!r}, continuous={t.get('continuous', True)}).")
  if m.name not in EDM_NETWORKS:
    raise ValueError(f"training.loss={loss!r} needs model.name in {list(EDM_NETWORKS)}, got {m.name!r}.")
  if m.get("scale_by_sigma", False) or not config.data.centered:
    raise ValueError(f"training.loss={loss!r}: EDM's preconditioning scales the network itself; set "
                     "model.scale_by_sigma=False and data.centered=True.")
  kind = edm.TRAINING_LOSSES[loss]
  section = config.get("edm", ml_collections.ConfigDict()).to_dict()
  known = set(edm.PRECOND_DEFAULTS[kind]) | set(edm.LOSS_DEFAULTS[kind])
  unknown = sorted(set(section) - set().union(*edm.PRECOND_DEFAULTS.values(), *edm.LOSS_DEFAULTS.values()))
  if unknown:
    raise ValueError(f"edm.{unknown[0]} is not an EDM parameter; the edm section takes {sorted(known)} for "
                     f"training.loss={loss!r}.")
  precond, loss_params = edm.split_params(kind, section)
  return dict(kind=kind, precond=precond, loss=loss_params)


TOY_DATASETS = ("gmm2d",)  # data.dataset of the embedded 2-D default (score_jax.pipeline.toy), not images


def is_toy(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config`` is the embedded 2-D default (or a variant): run by the toy pipeline, not the image one."""
  return config.get("data", {}).get("dataset") in TOY_DATASETS


def is_classifier(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config`` trains a noise-conditional classifier (it has a ``classifier`` section; see
  ``configs/classifier/``) rather than a score model. Its ``training.sde`` and ``model.*`` SDE fields are
  those of the score model it is meant to guide."""
  return "classifier" in config


def _build_wideresnet(config: ml_collections.ConfigDict):
  """The noise-conditional Wide-ResNet from ``classifier.*``, checked against ``data.image_size/num_channels``."""
  c, d = config.classifier, config.data
  _check_image_data(config)
  # two stride-2 groups: the shortcut's pooling needs sizes that halve exactly
  if d.image_size % 4:
    raise ValueError(f"data.image_size={d.image_size!r} must be divisible by 4 for the Wide-ResNet (two stride-2 "
                     "groups).")
  num_classes = _sampler_int(c.num_classes, "classifier.num_classes", 2)
  mean, std = tuple(float(v) for v in c.input_mean), tuple(float(v) for v in c.input_std)
  if len(mean) != len(std) or (mean and len(mean) != d.num_channels):
    raise ValueError(f"classifier.input_mean={mean} and classifier.input_std={std} must both be empty or both have "
                     f"data.num_channels={d.num_channels} values.")
  if any(not v > 0 for v in std):
    raise ValueError(f"classifier.input_std={std} must be positive.")
  return nets_wideresnet.WideResnet(
      blocks_per_group=_sampler_int(c.blocks_per_group, "classifier.blocks_per_group", 1),
      channel_multiplier=_sampler_int(c.channel_multiplier, "classifier.channel_multiplier", 1),
      num_outputs=num_classes, embedding_size=_sampler_int(c.embedding_size, "classifier.embedding_size", 1),
      fourier_scale=float(c.fourier_scale), input_mean=mean, input_std=std)


# classifier.name -> function(config) -> flax Module ``(x [B, H, W, C], sigma [B]) -> logits [B, num_classes]``.
CLASSIFIER_BUILDERS = {
    "wideresnet_noise_conditional": _build_wideresnet,
}


def build_classifier(config: ml_collections.ConfigDict):
  """The noise-conditional classifier named by ``classifier.name``, built from typed arguments."""
  if not is_classifier(config):
    raise ValueError("the config has no 'classifier' section; classifier configs live in configs/classifier/.")
  name = config.classifier.get("name", None)
  if name not in CLASSIFIER_BUILDERS:
    raise ValueError(f"Unknown classifier.name {name!r}; expected one of {sorted(CLASSIFIER_BUILDERS)}.")
  return CLASSIFIER_BUILDERS[name](config)


def build_loss_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE):
  """``loss_fn(key, score_fn, x)`` for ``training.loss`` (``dsm``, ``ism``, ``ssm``, ``ssm_vr``)."""
  t = config.training
  if t.loss in edm.TRAINING_LOSSES:
    edm_settings(config)
    return None  # trained by score_jax.train (the image launcher); there is no score-function loss
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


# sampling.method -> what it runs: the paper's predictor-corrector and probability-flow ODE samplers, the
# fast samplers of score_jax.fast_sampling, and EDM's Algorithm 2 and ablation sampler (score_jax.edm).
EDM_METHODS = ("edm", "edm_ablation")
SAMPLING_METHODS = ("pc", "ode") + fast_sampling.FAST_SAMPLERS + EDM_METHODS


def _get(s: ml_collections.ConfigDict, name: str, default):
  return s.get(name, default)  # configs written before a field existed keep the original's behaviour


def _sampler_int(value, name: str, minimum: int) -> int:
  if not validation.is_int(value, minimum):
    raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}.")
  return int(value)


def _sampler_float(value, name: str, minimum: float, strict: bool = False) -> float:
  ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
  if not ok or not np.isfinite(value) or value < minimum or (strict and value == minimum):
    raise ValueError(f"{name}={value!r}; expected a number {'>' if strict else '>='} {minimum}.")
  return float(value)


def sampler_settings(config: ml_collections.ConfigDict) -> dict:
  """The checked ``sampling.*`` settings of ``sampling.method`` (an error naming the field otherwise).

  ``sampling.N`` is the number of time steps (0: ``model.num_scales``, the original's). For ``'pc'`` it
  sets the SDE's discretisation; a discrete-time model (``training.continuous=False``) only knows its
  own ``model.num_scales`` noise levels, so it must stay 0 or equal there.
  """
  s = config.sampling
  method = s.method
  if method not in SAMPLING_METHODS:
    raise ValueError(f"sampling.method={method!r}; expected one of {list(SAMPLING_METHODS)}.")
  n = _sampler_int(_get(s, "N", 0), "sampling.N", 0) or int(config.model.num_scales)
  eps = _sampler_float(s.eps, "sampling.eps", 0.0, strict=True)
  out = dict(method=method, N=n, eps=eps, denoise=bool(s.noise_removal))
  if method == "pc":
    if not config.training.get("continuous", True) and n != config.model.num_scales:
      raise ValueError(f"sampling.N={n} differs from model.num_scales={config.model.num_scales}, but the model "
                       "is discrete-time (training.continuous=False) and only knows its own noise levels.")
    if str(config.training.sde).lower() in ("vpsde", "subvpsde") and config.model.beta_max >= n:
      raise ValueError(f"sampling.N={n} is too few steps for the PC sampler under {config.training.sde}: its DDPM "
                       f"discretisation needs beta_i = beta_max / N < 1 (model.beta_max={config.model.beta_max}); "
                       f"use sampling.N > {config.model.beta_max:g}, or a fast sampler (ddim, dpm_solver, heun).")
    kwargs = sampler_kwargs(config)
    _sampler_int(kwargs["n_steps"], "sampling.n_steps_each", 0)
    _sampler_float(kwargs["snr"], "sampling.snr", 0.0)
    out.update(kwargs)
  elif method == "ode":
    solver, steps = _get(s, "ode_solver", "tsit5"), _sampler_int(_get(s, "ode_steps", 0), "sampling.ode_steps", 0)
    try:
      sampling.check_solver(solver, steps)
    except ValueError as e:
      raise ValueError(f"sampling.ode_solver={solver!r}, sampling.ode_steps={steps}: {e}") from None
    out.update(solver=solver, steps=steps, rtol=_sampler_float(s.ode_rtol, "sampling.ode_rtol", 0.0, strict=True),
               atol=_sampler_float(s.ode_atol, "sampling.ode_atol", 0.0, strict=True))
  elif method in EDM_METHODS:
    out.update(edm=_edm_sampler_settings(s, method))
  else:
    schedule = _get(s, "schedule", "") or fast_sampling.DEFAULT_SCHEDULES[method]
    if schedule not in fast_sampling.SCHEDULES:
      raise ValueError(f"sampling.schedule={schedule!r}; expected one of {list(fast_sampling.SCHEDULES)} "
                       "(or '' for the sampler's default).")
    eta = _sampler_float(_get(s, "eta", 0.0), "sampling.eta", 0.0)
    if eta and method != "ddim":
      raise ValueError(f"sampling.eta={eta!r} is DDIM's stochasticity; sampling.method={method!r} is "
                       "deterministic (set sampling.eta=0).")
    out.update(schedule=schedule, eta=eta, rho=_sampler_float(_get(s, "rho", fast_sampling.EDM_RHO),
                                                              "sampling.rho", 0.0, strict=True))
  clip = _get(s, "clip_denoised", False)
  if not isinstance(clip, (bool, np.bool_)):
    raise ValueError(f"sampling.clip_denoised={clip!r}; expected True or False.")
  if clip and method not in fast_sampling.FAST_SAMPLERS:
    raise ValueError(f"sampling.clip_denoised=True applies to the fast samplers {list(fast_sampling.FAST_SAMPLERS)}, "
                     f"not sampling.method={method!r}; set it to False or choose one of those.")
  if clip and "centered" not in config.get("data", {}):
    raise ValueError("sampling.clip_denoised=True needs image data with a known range (data.centered); this "
                     "config has none. Set it to False.")
  out["clip_denoised"] = None
  if clip:  # the data range: [-1, 1] when centered, else [0, 1]
    out["clip_denoised"] = (-1.0, 1.0) if config.data.centered else (0.0, 1.0)
  return out


# EDM's generate.py defaults of the sampling.* fields that only its samplers read.
EDM_SAMPLING_DEFAULTS = dict(N=18, edm_sigma_min=0.0, edm_sigma_max=0.0, S_churn=0.0, S_min=0.0, S_max=float("inf"),
                             S_noise=1.0, edm_solver="heun", edm_discretization="edm", edm_schedule="linear",
                             edm_scaling="none", edm_epsilon_s=1e-3, edm_alpha=1.0)


def _edm_sampler_settings(s: ml_collections.ConfigDict, method: str) -> dict:
  """Keyword arguments of :func:`score_jax.edm.edm_sampler` / ``ablation_sampler`` from ``sampling.*``.

  ``sampling.N`` is ``num_steps`` (0: EDM's 18); ``sampling.edm_sigma_min`` / ``edm_sigma_max`` at 0 are EDM's
  defaults (edm: 0.002 / 80, ablation: those of the discretization), clamped to the model's noise range.
  """
  d = EDM_SAMPLING_DEFAULTS
  kw = dict(num_steps=_sampler_int(_get(s, "N", 0), "sampling.N", 0) or d["N"],
            rho=_sampler_float(_get(s, "rho", fast_sampling.EDM_RHO), "sampling.rho", 0.0, strict=True),
            S_churn=_sampler_float(_get(s, "S_churn", d["S_churn"]), "sampling.S_churn", 0.0),
            S_min=_sampler_float(_get(s, "S_min", d["S_min"]), "sampling.S_min", 0.0),
            S_noise=_sampler_float(_get(s, "S_noise", d["S_noise"]), "sampling.S_noise", 0.0))
  s_max = _get(s, "S_max", d["S_max"])
  if s_max != float("inf"):
    s_max = _sampler_float(s_max, "sampling.S_max", kw["S_min"])
  kw["S_max"] = float(s_max)
  for field in ("edm_sigma_min", "edm_sigma_max"):
    kw[field] = _sampler_float(_get(s, field, d[field]), f"sampling.{field}", 0.0)
  if kw["edm_sigma_max"] and kw["edm_sigma_max"] <= kw["edm_sigma_min"]:
    raise ValueError(f"sampling.edm_sigma_max={kw['edm_sigma_max']!r} must exceed sampling.edm_sigma_min="
                     f"{kw['edm_sigma_min']!r} (or be 0 for the default).")
  if method == "edm_ablation":
    for field, choices in (("solver", edm.SOLVERS), ("discretization", edm.DISCRETIZATIONS),
                           ("schedule", edm.SCHEDULES), ("scaling", edm.SCALINGS)):
      value = _get(s, f"edm_{field}", d[f"edm_{field}"])
      if value not in choices:
        raise ValueError(f"sampling.edm_{field}={value!r}; expected one of {list(choices)}.")
      kw[field] = value
    kw["epsilon_s"] = _sampler_float(_get(s, "edm_epsilon_s", d["edm_epsilon_s"]), "sampling.edm_epsilon_s", 0.0,
                                     strict=True)
    kw["alpha"] = _sampler_float(_get(s, "edm_alpha", d["edm_alpha"]), "sampling.edm_alpha", 0.0, strict=True)
  return kw


def _edm_sample_fn(method: str, settings: dict, sde: sde_lib.SDE, score_fn, shape, eps: float):
  """``sample(key, offset)`` of EDM's samplers on a score model of ``sde``, through its denoiser."""
  kw = dict(settings)
  lo, hi = edm.sde_sigma_range(sde, eps)  # the model's noise range, as EDM clamps to its network's
  user_min, user_max = kw.pop("edm_sigma_min"), kw.pop("edm_sigma_max")
  if method == "edm":
    kw.update(sigma_min=max(user_min or 0.002, lo), sigma_max=min(user_max or 80.0, hi))
  else:
    kw.update(sigma_min=user_min or None, sigma_max=user_max or None, net_sigma_min=lo, net_sigma_max=hi)
  denoise_fn = edm.denoiser_from_score(sde, score_fn)
  nfe = edm.sampler_nfe(kw["num_steps"], kw.get("solver", "heun"))

  def sample(key, offset):
    x = edm.edm_sample(key, denoise_fn, shape, ablation=method == "edm_ablation", sample_offset=offset, **kw)
    return x, jnp.asarray(nfe)
  return sample


def build_sampler(config: ml_collections.ConfigDict, sde: sde_lib.SDE, score_fn, shape):
  """``sample(key, offset) -> (samples [*shape], nfe)`` running ``sampling.method`` (pure; jit it outside).

  Example ``offset + b`` draws its noise from ``fold_in(key, offset + b)``.
  """
  st = sampler_settings(config)
  shape = tuple(int(d) for d in shape)
  method = st["method"]
  if method == "pc":
    sde_n = sde if st["N"] == sde.N else dataclasses.replace(sde, N=st["N"])
    kwargs = {k: st[k] for k in ("predictor", "corrector", "snr", "n_steps", "probability_flow", "denoise", "eps",
                                 "snr_reduction")}
    nfe = sampling.pc_nfe(st["N"], st["n_steps"], st["predictor"], st["corrector"])

    def sample(key, offset):
      x, _ = sampling.pc_sample(key, sde_n, score_fn, shape, sample_offset=offset, **kwargs)
      return x, jnp.asarray(nfe)
  elif method == "ode":
    def sample(key, offset):
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(shape[0]))
      z = jax.vmap(lambda k: sde.prior_sampling(k, shape[1:]))(keys)
      return sampling.ode_sample(None, sde, score_fn, shape, z=z, rtol=st["rtol"], atol=st["atol"], eps=st["eps"],
                                 denoise=st["denoise"], solver=st["solver"], steps=st["steps"])
  elif method in EDM_METHODS:
    sample = _edm_sample_fn(method, st["edm"], sde, score_fn, shape, st["eps"])
  else:
    def sample(key, offset):
      x, nfe = fast_sampling.fast_sample(method, key, sde, score_fn, shape, steps=st["N"], schedule=st["schedule"],
                                         eta=st["eta"], rho=st["rho"], eps=st["eps"], denoise=st["denoise"],
                                         sample_offset=offset, clip_denoised=st["clip_denoised"])
      return x, jnp.asarray(nfe)
  return sample


def validate(config: ml_collections.ConfigDict) -> None:
  """Build every part of ``config`` once, so a bad field fails before training or sampling starts."""
  sde = build_sde(config)
  build_model(config)
  build_loss_fn(config, sde)
  build_optimizer(config)
  sampler_settings(config)
