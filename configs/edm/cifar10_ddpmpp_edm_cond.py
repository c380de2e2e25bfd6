r"""DDPM++ trained with EDM's recipe on CIFAR-10, class-conditional (Karras et al. 2022, config F, ``--cond=1``).

The unconditional recipe of ``configs/edm/cifar10_ddpmpp_edm.py`` with EDM's class conditioning: the ten
CIFAR-10 classes (the class subfolders of a JPEG folder, or tfds' ``label``) one-hot, scaled by sqrt(10) and
mapped by a Dense layer onto the noise embedding (``model.label_dim = 10``, score_jax.nets.layers). EDM trains
this model without label dropout; samples get a random class each (``sampling.class_label = -1``) or the
class given:

    python -m score_jax.main --config configs/edm/cifar10_ddpmpp_edm_cond.py --workdir runs/edm/cifar10_cond
    python -m score_jax.main --config configs/edm/cifar10_ddpmpp_edm_cond.py --workdir runs/edm/cifar10_cond \
        --mode sample --config.sampling.class_label=3

EDM's README reports FID 1.79 at 35 NFE for this setting (``edm-cifar10-32x32-cond-vp``, with its non-leaky
augmentation, which score_jax does not implement: docs/edm.md), not measured here (200 Mimg). For
classifier-free guidance train with a null class, e.g. ``--config.training.label_dropout=0.1``, and sample
with ``--config.sampling.guidance=W`` (D = D_uncond + W (D_cond - D_uncond); 1 = no guidance; each step then
costs two network evaluations, made as one call on a doubled batch).
"""

from configs.edm.cifar10_ddpmpp_edm import get_config as edm_config

CIFAR10_CLASSES = 10


def get_config():
  config = edm_config()
  config.model.label_dim = CIFAR10_CLASSES
  config.training.label_dropout = 0.0  # EDM's conditional CIFAR-10; > 0 for classifier-free guidance
  config.sampling.class_label = -1  # a random class per sample
  config.sampling.guidance = 1.0
  return config
