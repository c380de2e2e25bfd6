r"""DDPM (Ho et al. 2020) on CIFAR-10: discrete VP noise scales, ancestral sampling.

The checkpoint the original README lists as vp/cifar10_ddpm reaches FID 3.24 (paper Table 3) and, with the
probability-flow ODE, NLL 3.28 bits/dim and FID 3.37 (paper Table 2).

    python -m score_jax.main --config configs/vp/ddpm/cifar10.py --workdir runs/vp/ddpm/cifar10

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

from configs.default_cifar10_configs import get_default_configs


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
  data.centered = True

  model = config.model
  model.name = "ddpm"
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  return config
