r"""NCSNv2 (Song & Ermon 2020) on CelebA 64x64: 500 noise scales from 90 to 0.01, EMA 0.999.

Reproduces the NCSNv2 CelebA model (no number is listed for it in the original README).

Sampled with annealed Langevin dynamics only (predictor "none", corrector "ald"), as NCSNv2 was.

    python -m score_jax.main --config configs/ve/ncsnv2/celeba.py --workdir runs/ve/ncsnv2/celeba

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

from configs.default_celeba_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = False
  training.loss = "smld"  # score_jax: discrete-time VE objective

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 5
  sampling.snr = 0.128

  model = config.model
  model.name = "ncsnv2_64"
  model.scale_by_sigma = True
  model.num_scales = 500
  model.ema_rate = 0.999
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  model.interpolation = "bilinear"

  optim = config.optim
  optim.weight_decay = 0
  optim.optimizer = "Adam"
  optim.lr = 1e-4
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
