r"""The NCSN network on CIFAR-10 with NCSNv2 techniques 1, 2, 4 and 5 (Song & Ermon 2020).

As cifar10_124.py plus technique 5, an exponential moving average of the weights (rate 0.999). No number is
listed for it in the original README.

Sampled with annealed Langevin dynamics only (predictor "none", corrector "ald"), as NCSN was.

    python -m score_jax.main --config configs/ve/ncsn/cifar10_1245.py --workdir runs/ve/ncsn/cifar10_1245

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
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 5
  sampling.snr = 0.176

  model = config.model
  model.name = "ncsn"
  model.scale_by_sigma = False
  model.num_scales = 232
  model.ema_rate = 0.999
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
