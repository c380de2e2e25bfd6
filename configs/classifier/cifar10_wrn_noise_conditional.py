r"""The noise-conditional WRN-28-10 classifier that guides class-conditional CIFAR-10 sampling (paper Fig. 4).

Trains ``p_t(y | x_t)`` on CIFAR-10 images perturbed by the VE SDE of ``configs/ve/cifar10_ncsnpp_continuous.py``
(sigma_min 0.01, sigma_max 50; the same ``training.sde`` and ``model.*`` SDE fields), ``t ~ U(1e-5, 1)``,
with cross-entropy (``score_jax.classifier``):

    python -m score_jax.main --config configs/classifier/cifar10_wrn_noise_conditional.py \
        --workdir runs/classifier/cifar10_wrn_noise_conditional

then ``--mode eval`` with the same --workdir for test accuracy, overall and in ``eval.num_noise_bins`` bins of
t. The architecture is the original's (``models/wideresnet_noise_conditional.py`` with ``create_classifier``'s
``blocks_per_group=4, channel_multiplier=10, num_outputs=10``: 38,913,242 parameters). The original never
released its training recipe nor an accuracy to reach; the optimizer and schedule below are the score models'
defaults (Adam 2e-4, warmup 5000, gradient clipping 1), an unverified choice. See docs/classifier.md.
"""

from configs.default_cifar10_configs import get_default_configs
from score_jax.nets import wideresnet


def get_config():
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"  # the SDE of the score model the classifier guides
  training.continuous = True
  training.n_iters = 100001
  training.snapshot_freq = 10000
  training.eval_freq = 500  # cross-entropy of one perturbed test batch
  training.snapshot_sampling = False  # a classifier has no sampler

  config.model.ema_rate = 0.999  # evaluation and guidance use the EMA parameters

  config.classifier = classifier = type(config)()
  classifier.name = "wideresnet_noise_conditional"
  classifier.blocks_per_group = 4  # WRN-28: depth 6 * 4 + 4
  classifier.channel_multiplier = 10
  classifier.num_classes = 10
  classifier.embedding_size = 128  # Fourier features of log sigma
  classifier.fourier_scale = 16.0
  # the original's preprocessing of [0, 1] images (data.centered=False), before the per-image standardisation
  classifier.input_mean = wideresnet.CIFAR10_MEAN
  classifier.input_std = wideresnet.CIFAR10_STD

  evaluate = config.eval
  evaluate.batch_size = 1000
  evaluate.num_noise_bins = 10  # accuracy reported in 10 equal bins of t
  evaluate.bpd_num_examples = 0  # evaluate on every test image
  return config
