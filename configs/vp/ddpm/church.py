r"""DDPM (Ho et al. 2020) on LSUN church_outdoor 256x256: discrete VP noise scales, ancestral sampling.

Reproduces DDPM's church model (no number is listed for it in the original README).

    python -m score_jax.main --config configs/vp/ddpm/church.py --workdir runs/vp/ddpm/church

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vpsde"
  training.continuous = False
  training.loss = "ddpm"  # score_jax: discrete-time VP objective
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "ancestral_sampling"
  sampling.corrector = "none"

  data = config.data
  data.category = "church_outdoor"
  data.centered = True

  model = config.model
  model.name = "ddpm"
  model.scale_by_sigma = False
  model.num_scales = 1000
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 1, 2, 2, 4, 4)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True

  optim = config.optim
  optim.lr = 2e-5
  return config
