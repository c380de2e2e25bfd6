r"""NCSN++ trained with the continuous VE SDE (sigma_max 348, 2000 steps) on FFHQ 256x256.

The author's FFHQ 256 model (released checkpoint ve/ffhq_256_ncsnpp_continuous; samples, no FID listed in
the original README). ``data.tfrecords_path`` is the original's; point it at your copy.

    python -m score_jax.main --config configs/ve/ffhq_256_ncsnpp_continuous.py \
        --workdir runs/ve/ffhq_256_ncsnpp_continuous

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"

  data = config.data
  data.dataset = "FFHQ"
  data.image_size = 256
  data.tfrecords_path = "/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords"

  model = config.model
  model.name = "ncsnpp"
  model.sigma_max = 348
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "output_skip"
  model.progressive_input = "input_skip"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.fourier_scale = 16
  model.conv_size = 3
  return config
