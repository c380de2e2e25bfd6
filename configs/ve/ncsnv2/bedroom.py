r"""NCSNv2 (Song & Ermon 2020) on LSUN bedroom 128x128: 1086 noise scales from 190 to 0.01, EMA 0.9999.

Reproduces the NCSNv2 bedroom model (no number is listed for it in the original README). The original
misspells ``training.continuous = False`` as ``training.continuouse``, so its resolved config trains
in continuous time, which its NCSNv2 network (indexing sigmas by an integer label) cannot do; this
port sets ``training.continuous = False`` as intended and drops the misspelled field.

Sampled with annealed Langevin dynamics only (predictor "none", corrector "ald"), as NCSNv2 was.

    python -m score_jax.main --config configs/ve/ncsnv2/bedroom.py --workdir runs/ve/ncsnv2/bedroom

trains (resuming from the newest checkpoint in --workdir); then ``--mode eval`` (test loss;
``--config.eval.enable_bpd=True`` for bits/dim, ``--config.eval.enable_sampling=True`` for FID) and
``--mode sample`` with the same --workdir (docs/training.md). ``--dry_run`` checks the config end to end first.
"""

from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.batch_size = 128
  training.sde = "vesde"
  training.continuous = False  # the original misspells this field (see the docstring)
  training.loss = "smld"  # score_jax: discrete-time VE objective

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 3
  sampling.snr = 0.095

  data = config.data
  data.category = "bedroom"
  data.image_size = 128

  model = config.model
  model.name = "ncsnv2_128"
  model.scale_by_sigma = True
  model.sigma_max = 190
  model.num_scales = 1086
  model.ema_rate = 0.9999
  model.sigma_min = 0.01
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
  optim.grad_clip = -1
  return config
