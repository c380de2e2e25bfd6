r"""DDPM++ trained with EDM's recipe on CIFAR-10, unconditional (Karras et al. 2022, config F of Table 2).

EDM's preconditioning and loss (training.loss='edm': c_skip/c_out/c_in/c_noise of Table 1, ln sigma ~
N(-1.2, 1.2^2), sigma_data = 0.5), its DDPM++ changes (channel_mult 2,2,2, dropout 0.13, no FIR), Adam at
lr 1e-3 with a 10 Mimg warm-up and no clipping, batch 512 for 200 Mimg (390,625 steps), an EMA with a
half-life of 500 kimg and ramp-up ratio 0.05, and sampling with Algorithm 2 at 18 steps (35 NFE,
deterministic Heun, sigma 80 -> 0.002). The SDE is the VE SDE over EDM's sampling range (0.002, 80): an
EDM model is a denoiser in sigma, i.e. a score model of that SDE, so every other sampler runs it too.

    python -m score_jax.main --config configs/edm/cifar10_ddpmpp_edm.py --workdir runs/edm/cifar10_ddpmpp_edm

then ``--mode sample`` / ``--mode eval`` with the same --workdir. EDM's README reports FID 1.97 at 35 NFE
for this setting (its ``edm-cifar10-32x32-uncond-vp`` checkpoint) with its non-leaky augmentation
(p = 0.12); score_jax does not implement that augmentation pipeline yet (docs/edm.md), so this config
uses random horizontal flips instead and is expected to land somewhat above 1.97 (not measured: 200 Mimg
is about two days on 8 V100s).
"""

import ml_collections

from configs.vp.cifar10_ddpmpp_continuous import get_config as ddpmpp_config


def get_config():
  config = ddpmpp_config()  # the DDPM++ network of the original's CIFAR-10 configs, changed below as EDM does

  training = config.training
  training.sde = "vesde"
  training.continuous = True
  training.loss = "edm"  # EDM's EDMLoss with EDMPrecond (edm_vp / edm_ve: its VP / VE variants)
  training.reduce_mean = False  # EDM sums the per-element loss over each image
  training.batch_size = 512
  training.n_iters = 390625  # 200 Mimg
  training.snapshot_freq = 50000

  config.edm = edm = ml_collections.ConfigDict()  # EDM's parameter names (training/loss.py, networks.py)
  edm.sigma_data = 0.5
  edm.P_mean = -1.2
  edm.P_std = 1.2

  sampling = config.sampling
  sampling.method = "edm"  # Algorithm 2; deterministic at S_churn = 0
  sampling.N = 18  # 35 NFE

  data = config.data
  data.centered = True  # EDM's data are in [-1, 1]
  data.random_flip = True

  model = config.model
  model.sigma_min = 0.002  # the VE SDE over EDM's sampling range
  model.sigma_max = 80
  model.ema_rate = 0.9999  # unused while ema_halflife_kimg > 0
  model.ema_halflife_kimg = 500.0
  model.ema_rampup_ratio = 0.05
  model.ch_mult = (2, 2, 2)
  model.dropout = 0.13

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 19531  # 10 Mimg at batch 512
  optim.grad_clip = 0.0  # EDM does not clip
  return config
