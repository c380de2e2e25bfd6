r"""DDPM on CIFAR-10 without time conditioning (``model.conditional = False``).

Tests NCSNv2's technique 3 (Song & Ermon 2020: a noise-unconditional network) on DDPM (no number is
listed for it in the original README). Ancestral sampling, no corrector.

    python -m score_jax.main --config configs/vp/ddpm/cifar10_unconditional.py \
        --workdir runs/vp/ddpm/cifar10_unconditional

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
  model.conditional = False
  return config
