r"""NCSN (Song & Ermon 2019) on CelebA: 10 noise scales from 1 to 0.01, no EMA.

The NCSNv1 baseline of the NCSNv2 technique ablation (Song & Ermon 2020); no number is listed for it in
the original README.

Sampled with annealed Langevin dynamics only (predictor "none", corrector "ald"), as NCSN was.

    python -m score_jax.main --config configs/ve/ncsn/celeba.py --workdir runs/ve/ncsn/celeba

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

from configs.default_celeba_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  # The original assigns "vesde" to training.loss here (a typo that leaves training.sde unset); the evident
  # intent, and what its CIFAR-10 twin does, is training.sde.
  training.sde = "vesde"
  training.continuous = False
  training.loss = "smld"  # score_jax: discrete-time VE objective

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 100
  sampling.snr = 0.316

  model = config.model
  model.name = "ncsn"
  model.scale_by_sigma = False
  model.sigma_max = 1
  model.num_scales = 10
  model.ema_rate = 0.0
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  model.interpolation = "bilinear"

  optim = config.optim
  optim.weight_decay = 0
  optim.optimizer = "Adam"
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
