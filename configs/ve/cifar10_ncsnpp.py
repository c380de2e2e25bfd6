r"""NCSN++ trained with discrete SMLD noise scales (VE, 1000 sigmas) on CIFAR-10.

The released checkpoint ve/cifar10_ncsnpp reaches FID 2.45, IS 9.73 (paper Table 3, original README) with
the PC sampler (reverse diffusion + Langevin, snr 0.16).

    python -m score_jax.main --config configs/ve/cifar10_ncsnpp.py --workdir runs/ve/cifar10_ncsnpp

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = False
  training.loss = "smld"  # score_jax: discrete-time VE objective

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"

  model = config.model
  model.name = "ncsnpp"
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "residual"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.conv_size = 3
  return config
