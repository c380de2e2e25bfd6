r"""DDPM++ trained with discrete DDPM noise scales (VP, 1000 steps) on CIFAR-10.

The released checkpoint vp/cifar10_ddpmpp reaches FID 2.78, IS 9.64 (paper Table 3, original README) with
ancestral sampling (no corrector). DDPM++ is the ``ncsnpp`` network without FIR resampling and
progressive input.

    python -m score_jax.main --config configs/vp/cifar10_ddpmpp.py \
        --workdir runs/vp/cifar10_ddpmpp

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
  model.name = "ncsnpp"
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.fourier_scale = 16
  model.conv_size = 3
  return config
